"""`inv iam.env`, `inv iam.account` and `inv iam.status` run as a user runs them: a clone of the project,
moto, real git and the pinned Terraform on the fixture roots. One story per behaviour only these parts can
prove; the decisions themselves are tested in tests/unit."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.project import ACCOUNT_ID, Project, base_config, git

STG_KEY = "acme-api/iam/env/stg.tfstate"
ACCOUNT_KEY = "acme-api/iam/account.tfstate"
BUCKET = f"acme-api-tfstate-{ACCOUNT_ID}"
TABLE = "acme-api-tf-locks"
STG_RECORD, ACCOUNT_RECORD = "/acme-api/iam/env/stg", "/acme-api/iam/account"
START_URL = "https://acme.awsapps.example/start"


def assert_user_error(result, *needles: str) -> None:
    """Non-zero exit, no traceback, and every needle in the output."""
    assert result.code != 0, result.all
    assert "Traceback" not in result.all, result.all
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"


def record(aws, name: str) -> dict | None:
    try:
        return json.loads(aws("ssm").get_parameter(Name=name)["Parameter"]["Value"])
    except aws("ssm").exceptions.ParameterNotFound:
        return None


def buckets(aws) -> list[str]:
    return [b["Name"] for b in aws("s3").list_buckets()["Buckets"]]


def commit(project: Project, path: str, text: str, message: str = "change") -> None:
    target = project.path / path
    target.write_text(target.read_text() + text if target.exists() else text)
    git(project.path, "add", path)
    git(project.path, "commit", "-q", "-m", message)
    git(project.path, "push", "-q")


def untracked_and_ignored(project: Project) -> set[str]:
    return set(git(project.path, "status", "--porcelain", "--ignored", "roots", "iam").splitlines())


@pytest.mark.terraform
def test_the_commit_is_applied_not_the_checkout_and_a_second_run_changes_nothing(project, aws):
    # not committed: an edit of the root module, and an ignored file Terraform would load
    (project.path / "roots" / "environment" / "main.tf").write_text(
        (project.path / "roots" / "environment" / "main.tf").read_text() + '\noutput "edited" {\n  value = "x"\n}\n')
    (project.path / ".git" / "info" / "exclude").write_text("override.tf\n")
    (project.path / "roots" / "environment" / "override.tf").write_text('locals {\n  broken = nope\n}\n')
    before = untracked_and_ignored(project)

    result = project.inv("iam.env", "--name", "stg")

    assert result.code == 0, result.all
    assert "UNCOMMITTED CHANGES ARE NOT APPLIED: roots/environment/main.tf" in result.out
    assert result.out.index(f"in {ACCOUNT_ID} for stg") < result.out.index("Terraform: plan")  # who, first
    # the backend was created with the protections a state bucket needs
    s3 = aws("s3")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]  # lock files' versions stay bounded
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90  # moto 5.2 drops NewerNoncurrentVersions
    assert rule["Expiration"] == {"ExpiredObjectDeleteMarker": True} and rule["Status"] == "Enabled"
    # the state holds the committed outputs only; the record names the commit and the tree ids
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    assert set(state["outputs"]) == {"lambda_role_names"}
    applied = record(aws, STG_RECORD)
    head = git(project.path, "rev-parse", "HEAD")
    assert applied["commit"] == head and applied["branch"] == "staging" and applied["format"] == 3
    assert applied["applied_by"].endswith(":user/moto")
    assert applied["outputs"]["lambda_role_names"] == ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]
    assert applied["trees"]["roots/environment"] == git(project.path, "rev-parse", "HEAD:roots/environment")
    assert applied["fingerprint"] == project.fingerprint("environment")
    assert record(aws, ACCOUNT_RECORD) is None
    # the apply ran elsewhere: nothing new in the working tree, no plan file or .terraform left there
    assert untracked_and_ignored(project) == before

    s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "owner", "Value": "platform"}]})
    again = project.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert f"bucket {BUCKET} and table {TABLE} exist (verified" in again.out
    assert "the plan has no changes" in again.out and "0 to add, 0 to change, 0 to destroy" in again.out
    assert s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"] == [{"Key": "owner", "Value": "platform"}]


def develop_applies_a_newer_account_root(project: Project) -> None:
    """Branch develop (another environment of the account) changes the account root and applies it."""
    git(project.path, "checkout", "-q", "-b", "develop")
    git(project.path, "push", "-q", "-u", "origin", "develop")
    commit(project, "roots/account/main.tf", "\n# develop's own change\n", "develop's change")
    applied = project.inv("iam.account")
    assert applied.code == 0, applied.all
    git(project.path, "checkout", "-q", "staging")


@pytest.mark.terraform
def test_the_shared_account_scope_is_taken_over_only_on_request(project, aws):
    develop_applies_a_newer_account_root(project)
    ssm = aws("ssm")
    theirs = record(aws, ACCOUNT_RECORD)
    assert theirs["branch"] == "develop"
    shown = {**theirs, "applied_by": "arn:aws:iam::123456789012:user/\x1b[2Jmallory"}  # written by another tool
    ssm.put_parameter(Name=ACCOUNT_RECORD, Value=json.dumps(shown), Type="String", Overwrite=True)

    refused = project.inv("iam.account")
    assert_user_error(refused, "last applied from branch 'develop'", f"commit {theirs['commit'][:12]}",
                      "user/\\x1b[2Jmallory", "shared by dev, stg", "--take-over")
    assert "\x1b" not in refused.all
    automated = project.inv("iam.account", "--yes")
    assert_user_error(automated, "--yes does not answer this", "--take-over")
    assert record(aws, ACCOUNT_RECORD) == shown  # develop's account IAM is untouched

    taken = project.inv("iam.account", "--take-over")
    assert taken.code == 0, taken.all
    assert "TAKING OVER the shared account scope" in taken.out and "for stg" in taken.out
    applied = record(aws, ACCOUNT_RECORD)
    assert applied["branch"] == "staging" and applied["scope"] == "account"
    state = json.loads(aws("s3").get_object(Bucket=BUCKET, Key=ACCOUNT_KEY)["Body"].read())
    assert state["outputs"]["deployer_user_name"]["value"] == "acme-api-circleci-deployer"


def test_findings_stop_before_anything_changes(project, aws, tmp_path):
    (tmp_path / "main").mkdir()
    wrong_branch = Project.create(tmp_path / "main", project.env, base_config(aws("s3").meta.endpoint_url),
                                  branch="main")
    assert_user_error(wrong_branch.inv("iam.env", "--name", "stg"), "checkout is on branch 'main'",
                      "git checkout staging && git pull --ff-only")
    assert_user_error(project.inv("iam.env", "--name", "stag"), "There is no environment 'stag'", "Did you mean 'stg'")
    assert_user_error(project.inv("iam.env", "--name", "stg;touch pwned"), "is not an environment name")
    assert not (project.path / "pwned").exists()
    no_keys = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert_user_error(project.inv("iam.env", "--name", "stg", env=no_keys), "No AWS credentials", "aws sso login",
                      "needed for environment stg", "then resume with `inv iam.env --name stg`")
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("git", "bash"):
        (bare / tool).symlink_to(shutil.which(tool))
    (bare / "inv").symlink_to(Path(sys.executable).parent / "inv")
    assert_user_error(project.inv("iam.env", "--name", "stg", env={**project.env, "PATH": str(bare)}),
                      "terraform is not on PATH", "requirements-dev.txt")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "staging", str(project.remote), str(other))
    git(other, "-c", "user.email=a@b", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "merged")
    git(other, "push", "-q")
    assert_user_error(project.inv("iam.env", "--name", "stg"), "is not what was merged", "git pull --ff-only origin "
                                                                                          "staging")
    assert buckets(aws) == [] and aws("ssm").describe_parameters()["Parameters"] == []


def test_credentials_of_another_account_or_rejected_stop_before_anything_changes(tmp_path, moto_reset, aws_env,
                                                                               aws, monkeypatch):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset, account_id="111111111111"))
    assert_user_error(project.inv("iam.env", "--name", "stg"), f"credentials are for account {ACCOUNT_ID}",
                      "111111111111", "nothing was changed")
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys: ours are unknown to it
    rejected = project.inv("iam.env", "--name", "stg")
    monkeypatch.undo()
    assert_user_error(rejected, "rejected the credentials", "InvalidClientTokenId", "fresh credentials")
    assert buckets(aws) == []


def test_a_dry_run_needs_no_credentials_and_shows_no_secret(tmp_path, aws_env):
    env = {k: v for k, v in aws_env.items() if not k.startswith("AWS_")}
    env["CIRCLECI_TOKEN"] = "SENTINEL-circleci-token-1234567890"
    config = base_config("http://127.0.0.1:9")  # a password in the URL is refused (tests/unit/test_config.py)
    project = Project.create(tmp_path, env, config, branch="main")
    quiet = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert "TF_STATE_KEY=" not in quiet.out and "--verbose shows each Terraform step's environment" in quiet.out
    result = project.inv("iam.env", "--name", "stg", "--dry-run", "--verbose")
    assert result.code == 4, result.all  # on main: a real run would stop (wrong-branch)
    for title in ("Backend", "Terraform: plan", "Confirm", "apply", "Record"):
        assert title in result.out
    assert "would stop a real run" in result.out and "git checkout staging" in result.out
    assert "ERROR [dry-run-findings]: The dry run found 1 finding(s) that would stop a real run (wrong-branch" in \
        result.err and "then run it again: inv iam.env --name stg --dry-run" in result.err
    assert "TF_STATE_KEY=acme-api/iam/env/stg.tfstate" in result.out
    assert "the keys that pass the caller identity check" in result.out
    assert "SENTINEL" not in result.all and "AWS_SECRET_ACCESS_KEY=" not in result.out
    scripted = project.inv("iam.env", "--env", "stg", "--dry-run", "--json")  # stdout: the document alone
    document = json.loads(scripted.out)
    assert scripted.code == 4 and document["would_stop"] and [f["id"] for f in document["findings"]] == [
        "wrong-branch"], scripted.all
    assert [a["kind"] for a in document["actions"]] == ["backend", "plan", "confirm", "apply", "record"]
    assert "Dry run: IAM for environment stg" in scripted.err and "SENTINEL" not in scripted.all
    assert not any(line.lstrip().startswith(("env:", "credentials:")) for a in document["actions"]
                   for line in a["lines"])  # as on screen: only --verbose shows them
    refused = project.inv("iam.env", "--name", "stg", "--json")
    assert refused.code == 1 and "ERROR [flag-invalid]: --json is for a dry run's findings" in refused.err


@pytest.mark.terraform
def test_a_failing_plan_or_apply_records_nothing_and_names_the_resume(project, aws):
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/failing-plan"
    project.commit_config(config)
    planned = project.inv("iam.env", "--name", "stg")
    assert_user_error(planned, "plan of environment stg failed", "nothing was applied", "inv iam.env --name stg")
    assert "Terraform: apply" not in planned.out and "Contents" not in aws("s3").list_objects_v2(Bucket=BUCKET)
    config["terraform"]["roots"]["environment"] = "roots/failing-apply"
    project.commit_config(config)
    applied = project.inv("iam.env", "--name", "stg")
    assert_user_error(applied, "apply to environment stg failed", "resume with `inv iam.env --name stg`")
    assert record(aws, STG_RECORD) is None


@pytest.mark.terraform
def test_a_protected_environment_asks_and_yes_answers(tmp_path, moto_reset, aws_env, aws):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset), branch="prod")
    asked = project.inv("iam.env", "--name", "prod")
    assert_user_error(asked, "no terminal to ask", "--yes")
    assert aws("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    confirmed = project.inv("iam.env", "--name", "prod", "--yes")
    assert confirmed.code == 0, confirmed.all
    assert "environment prod is protected" in confirmed.out


@pytest.mark.terraform
def test_terraform_runs_as_the_checked_identity_and_nothing_else_from_the_shell(tmp_path, moto_reset, aws_env, aws):
    iam = aws("iam")
    keys = {}
    for name in ("admin", "other"):
        iam.create_user(UserName=name)
        keys[name] = iam.create_access_key(UserName=name)["AccessKey"]
    folder = tmp_path / "aws"
    folder.mkdir()
    (folder / "credentials").write_text(f"[admin]\naws_access_key_id = {keys['admin']['AccessKeyId']}\n"
                                        f"aws_secret_access_key = {keys['admin']['SecretAccessKey']}\n")
    (folder / "config").write_text("[profile admin]\nregion = eu-west-1\n")
    env = {**aws_env, "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"), "AWS_CONFIG_FILE":
           str(folder / "config"), "AWS_ACCESS_KEY_ID": keys["other"]["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": keys["other"]["SecretAccessKey"], "TF_WORKSPACE": "sandbox",
           "TF_CLI_ARGS_plan": "-destroy", "TF_VAR_project": "evil"}
    config = base_config(moto_reset)
    for account in config["accounts"].values():
        account["profile"] = "admin"
    project = Project.create(tmp_path, env, config)

    result = project.inv("iam.env", "--name", "stg")

    assert result.code == 0, result.all
    assert "profile is 'admin' and AWS_ACCESS_KEY_ID is exported" in result.out
    used = iam.get_access_key_last_used(AccessKeyId=keys["other"]["AccessKeyId"])["AccessKeyLastUsed"]
    assert not used.get("LastUsedDate"), "the exported keys were never used"
    assert record(aws, STG_RECORD)["applied_by"] == "arn:aws:iam::123456789012:user/admin"
    keys_in_bucket = [o["Key"] for o in aws("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys_in_bucket == [STG_KEY]  # the default workspace: TF_WORKSPACE did not move the state
    state = json.loads(aws("s3").get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    assert state["outputs"]["lambda_role_names"]["value"][0].startswith("acme-api-")  # not TF_VAR_project
    for secret in (keys["admin"]["SecretAccessKey"], keys["other"]["SecretAccessKey"]):
        assert secret not in result.all


def sso_env(tmp_path: Path, aws_env: dict, *, token: str) -> dict:
    """A shell whose AWS_PROFILE is a legacy SSO profile; HOME holds its token cache: "none" (never logged in)
    or "expired" (a cached token past its expiry)."""
    home = tmp_path / "home"
    (home / ".aws" / "sso" / "cache").mkdir(parents=True)
    config = home / ".aws" / "config"
    config.write_text(f"[profile legacy]\nsso_start_url = {START_URL}\nsso_region = eu-west-1\nsso_account_id = "
                      "123456789012\nsso_role_name = Administrator\nregion = eu-west-1\n")
    if token == "expired":
        name = hashlib.sha1(START_URL.encode()).hexdigest() + ".json"
        (home / ".aws" / "sso" / "cache" / name).write_text(json.dumps({
            "startUrl": START_URL, "region": "eu-west-1", "accessToken": "t", "expiresAt": "2020-01-01T00:00:00Z"}))
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    return {**env, "HOME": str(home), "AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "legacy",
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials")}


def test_an_expired_sso_login_names_the_login_command_and_stops_the_gate_at_once(tmp_path, moto_reset, aws_env):
    expired = Project.create(tmp_path / "a", sso_env(tmp_path / "a", aws_env, token="expired"),
                             base_config(moto_reset))
    assert_user_error(expired.inv("iam.env", "--name", "stg"), "aws sso login --profile legacy",
                      "SSO login of profile 'legacy'")
    config = base_config(moto_reset)
    config["accounts"]["nonprod"]["profile"] = "legacy"
    never = Project.create(tmp_path / "b", {**sso_env(tmp_path / "b", aws_env, token="none"), "AWS_PROFILE": ""},
                           config)
    result = never.inv("iam.env", "--name", "stg")
    assert_user_error(result, "aws sso login --profile legacy", "accounts.nonprod.profile")
    assert "check the network" not in result.all
    gate = expired.inv("ci.gate", "--env", "stg", "--timeout-s", "60", "--poll-s", "0.5", "--settle-s", "0")
    assert_user_error(gate, "aws sso login --profile legacy")
    assert "timed out" not in gate.all


def test_status_says_what_each_commit_needs_and_which_folder_changed(project, aws):
    endpoint = aws("s3").meta.endpoint_url
    never = project.inv("iam.status", "--check")
    assert never.code == 3 and "never applied" in never.out, never.all
    for env in ("dev", "stg", "prod"):
        project.write_record("environment", env, endpoint=endpoint)
    for env in ("stg", "prod"):
        project.write_record("account", env, endpoint=endpoint)
    current = project.inv("iam.status", "--check")
    assert current.code == 0, current.all
    assert "IAM status of commit" in current.out and "branch staging" in current.out

    commit(project, "README.md", "an application change\n")  # outside iam/ and config/: every scope stays current
    assert project.inv("iam.status", "--check").code == 0
    commit(project, "roots/environment/main.tf", "\n# a change of the environment root\n")
    pending = project.inv("iam.status", "--check")
    assert pending.code == 3, pending.all
    assert "change pending (roots/environment changed)" in pending.out
    assert pending.out.count("change pending") == 3  # dev, stg, prod; the accounts stay current
    assert "inv iam.env --name stg" in pending.out
    assert "git checkout develop && git pull --ff-only && inv iam.env --name dev" in pending.out


def test_status_on_a_pull_requests_branch_says_what_merging_it_would_need(project, aws):
    endpoint = aws("s3").meta.endpoint_url
    for env in ("dev", "stg", "prod"):
        project.write_record("environment", env, endpoint=endpoint)
    for env in ("stg", "prod"):
        project.write_record("account", env, endpoint=endpoint)
    git(project.path, "checkout", "-q", "-b", "feature/roles")
    path = project.path / "roots" / "environment" / "main.tf"
    path.write_text(path.read_text() + "\n# one more permission\n")
    git(project.path, "commit", "-q", "-am", "IAM change")
    result = project.inv("iam.status")
    assert result.code == 0, result.all
    head = git(project.path, "rev-parse", "HEAD")[:12]
    assert f"IAM status of commit {head} (branch feature/roles)" in result.out
    assert "feature/roles deploys no environment. Merged into an environment's branch, this commit would need:" \
        in result.out
    assert "merged into staging (stg): inv iam.env --name stg  (environment stg: change pending (roots/environment " \
           "changed))" in result.out
    assert "merged into prod (prod): inv iam.env --name prod" in result.out
    assert "git checkout" not in result.out  # checking out staging applies nothing from this branch
    only = project.inv("iam.status", "--env", "stg")  # an environment not examined is not said to need nothing
    assert "merged into staging (stg): inv iam.env --name stg" in only.out and "merged into prod" not in only.out


def test_status_as_json_for_one_environment_parses_with_a_row_per_scope(project, aws):
    endpoint = aws("s3").meta.endpoint_url
    project.write_record("environment", "stg", endpoint=endpoint, branch="evil\n\x1b[2J")
    result = project.inv("iam.status", "--env", "stg", "--json", "--check")
    assert result.code == 3, result.all  # the account step was never applied
    document = json.loads(result.out)
    assert document["format"] == 1 and document["commit"] == git(project.path, "rev-parse", "HEAD")
    assert document["branch"] == "staging" and document["commands"] == ["inv iam.account --env stg"]
    account, stg = document["scopes"]  # stg and its account only
    assert (account["kind"], account["state"], account["applied"]) == ("account", "never-applied", None)
    assert (stg["kind"], stg["environment"], stg["state"]) == ("environment", "stg", "current")
    assert stg["fingerprint"] == stg["applied"]["fingerprint"] == project.fingerprint("environment", "stg")
    assert stg["applied"]["commit"] == document["commit"] and "\x1b" not in result.out  # escaped as \u001b


@pytest.mark.terraform
def test_plan_from_a_pull_requests_branch_shows_the_change_and_changes_nothing(project, aws):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    unchanged = project.inv("iam.plan")
    assert unchanged.code == 0 and "No change: merged into staging" in unchanged.out, unchanged.all
    git(project.path, "checkout", "-q", "-b", "feature/outputs")
    git(project.path, "push", "-q", "-u", "origin", "feature/outputs")
    commit(project, "roots/environment/main.tf", '\noutput "queue_name" {\n  value = "acme-api-jobs"\n}\n')
    s3, ssm, ddb = aws("s3"), aws("ssm"), aws("dynamodb")

    def everything():
        return (s3.head_object(Bucket=BUCKET, Key=STG_KEY)["VersionId"],
                s3.head_object(Bucket=BUCKET, Key=ACCOUNT_KEY)["VersionId"],
                sorted(str(i) for i in ddb.scan(TableName=TABLE)["Items"]),
                [ssm.get_parameter(Name=n)["Parameter"]["Version"] for n in (STG_RECORD, ACCOUNT_RECORD)],
                sorted(b["Name"] for b in s3.list_buckets()["Buckets"]))

    before = everything()
    main_tf = project.path / "roots" / "environment" / "main.tf"
    main_tf.write_text(main_tf.read_text() + "# not committed\n")
    planned = project.inv("iam.plan", "--env", "stg", "--json")  # the plan for a person on stderr, JSON on stdout
    assert planned.code == 2, planned.all
    assert "UNCOMMITTED CHANGES ARE NOT PLANNED: roots/environment/main.tf: the plan uses commit" in planned.err
    assert "account nonprod (123456789012): current (its record matches this commit): nothing to plan" in planned.err
    assert "environment stg: 0 to add, 0 to change, 0 to destroy; 1 output(s) change" in planned.err
    assert "-lock=false" in planned.err and "Merged into staging, commit" in planned.err
    document = json.loads(planned.out)
    assert (document["format"], document["branch"], document["environment"], document["changes"]) == (
        1, "feature/outputs", "stg", True)
    assert [(s["kind"], s["changes"], s["text"]) for s in document["scopes"]] == [
        ("account", False, "current (its record matches this commit): nothing to plan"),
        ("environment", True, "0 to add, 0 to change, 0 to destroy; 1 output(s) change")]
    assert everything() == before  # no lock taken, no state written, no record, no backend touched
    assert not list((project.path.parent / "xdg-cache").rglob("runbook.tfplan"))  # the saved plan is gone


def test_plan_of_a_first_deploy_says_so_and_creates_nothing(project, aws):
    planned = project.inv("iam.plan", "--env", "stg")
    assert planned.code == 2, planned.all
    assert "has no backend yet: the first apply creates the backend and every resource" in planned.out
    assert "Traceback" not in planned.all and buckets(aws) == []


@pytest.mark.terraform
def test_drift_uses_this_checkouts_script_and_cannot_tell_for_a_moved_root(project, aws):
    script = project.path / "iam" / "terraform" / "bin" / "deploy-app.sh"
    current = script.read_text()
    script.write_text(current.replace('"" | plan | apply | preview) ;;', '"" | plan | apply) ;;'))  # before iam.plan
    git(project.path, "commit", "-q", "-am", "an older deploy-app.sh")
    git(project.path, "push", "-q")
    assert project.inv("iam.account").code == 0 and project.inv("iam.env", "--name", "stg").code == 0
    script.write_text(current)
    git(project.path, "commit", "-q", "-am", "today's deploy-app.sh")
    git(project.path, "push", "-q")
    clean = project.inv("iam.drift", "--env", "stg", "--json")
    assert clean.code == 0 and "No drift" in clean.err, clean.all
    assert json.loads(clean.out) == {"format": 1, "environment": "stg", "drift": False, "scopes": [
        {"kind": "account", "environment": None, "account": "nonprod", "account_id": "123456789012",
         "differences": [], "fix": None},
        {"kind": "environment", "environment": "stg", "account": "nonprod", "account_id": "123456789012",
         "differences": [], "fix": None}]}
    git(project.path, "mv", "roots/environment", "roots/env2")
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/env2"
    (project.path / "config" / "environments.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    git(project.path, "commit", "-q", "-am", "the environment root moved")
    moved = project.inv("iam.drift", "--env", "stg")
    assert moved.code == 1 and "ERROR [drift-unknown]" in moved.err and "has no folder roots/env2" in moved.err, \
        moved.all


def test_status_prints_record_text_from_outside_harmlessly(project, aws):
    project.write_record("environment", "stg", endpoint=aws("s3").meta.endpoint_url, branch="evil\n\x1b[2Jbranch")
    result = project.inv("iam.status")
    assert result.code == 0, result.all
    assert "\x1b" not in result.all and "evil\\n\\x1b[2Jbranch" in result.out
    assert "[rehearsal]" in result.out  # accounts with endpoint_url are marked


@pytest.mark.terraform
def test_shared_modules_are_applied_from_the_commit_and_nothing_outside_the_allowed_folders(project, aws):
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/modular"  # calls modules two levels deep, reads their files
    project.commit_config(config)
    applied = project.inv("iam.env", "--name", "stg")
    assert applied.code == 0, applied.all
    assert record(aws, STG_RECORD)["outputs"]["lambda_role_names"] == ["acme-api-stg-lambda-api",
                                                                         "acme-api-stg-lambda-worker"]
    commit(project, "roots/modules/role-name/main.tf", "\n# a change two modules deep\n")
    pending = project.inv("iam.status")
    assert "environment stg" in pending.out and "change pending (roots/modules changed)" in pending.out

    outside = project.path / "elsewhere"
    shutil.copytree(project.path / "roots" / "modules" / "role-name", outside)
    main = project.path / "roots" / "modular" / "main.tf"
    main.write_text(main.read_text().replace('"../modules/lambda-roles"', '"../../elsewhere"'))
    git(project.path, "add", "elsewhere", "roots/modular/main.tf")
    commit(project, "roots/modular/main.tf", "", "call a module outside the allowed folders")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "module-missing", "not in the folders the apply may read")
    assert record(aws, STG_RECORD)["commit"] != git(project.path, "rev-parse", "HEAD")

    main.write_text(main.read_text().replace('"../../elsewhere"', '"git::https://example.invalid/m.git"'))
    commit(project, "roots/modular/main.tf", "", "an unpinned remote module")
    unpinned = project.inv("iam.env", "--name", "stg")
    assert_user_error(unpinned, "module-source-unpinned", "roots/modular/main.tf", "is not pinned (no ref=)")
    assert "Terraform: plan" not in unpinned.out


def test_a_link_out_of_the_repository_is_refused(project):
    (project.path / "roots" / "environment" / "policy.json").symlink_to("/etc/hostname")
    git(project.path, "add", "roots/environment/policy.json")
    git(project.path, "commit", "-q", "-m", "a link out")
    git(project.path, "push", "-q")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "reference-leaves-repository", "policy.json", "/etc/hostname")


@pytest.mark.terraform
def test_an_apply_whose_reader_has_gone_still_applies_and_records(project, aws):
    proc = subprocess.Popen([str(Path(sys.executable).parent / "inv"), "iam.env", "--name", "stg"], cwd=project.path,
                            env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()  # `inv ... | head -0`: the reader exits before the first line
    err = proc.stderr.read().decode("utf-8", "replace")
    assert proc.wait(timeout=240) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert record(aws, STG_RECORD)["commit"] == git(project.path, "rev-parse", "HEAD")


@pytest.mark.terraform
def test_applied_but_not_recorded_says_so_and_the_resume_is_an_empty_apply(project, aws):
    ssm = aws("ssm")
    assert project.inv("iam.env", "--name", "stg").code == 0
    older = json.dumps({**record(aws, STG_RECORD), "commit": "0" * 40})
    for _ in range(99):  # the record reaches 100 versions, the oldest labelled
        ssm.put_parameter(Name=STG_RECORD, Value=older, Type="String", Overwrite=True)
    ssm.label_parameter_version(Name=STG_RECORD, ParameterVersion=1, Labels=["first-release"])
    commit(project, "roots/environment/main.tf", "\n# next\n")
    first = project.inv("iam.env", "--name", "stg")
    assert_user_error(first, "WAS applied", "NOT written", "gate keeps waiting", "version 1 has the label(s)",
                      "aws ssm unlabel-parameter-version --name /acme-api/iam/env/stg --parameter-version 1 --labels "
                      "first-release", "it plans against the state as it is now, applies what is missing")
    ssm.unlabel_parameter_version(Name=STG_RECORD, ParameterVersion=1, Labels=["first-release"])
    again = project.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert "the plan has no changes" in again.out
    assert record(aws, STG_RECORD)["commit"] == git(project.path, "rev-parse", "HEAD")


def test_the_teams_branch_counts_not_a_forks(tmp_path, moto_reset, aws_env, aws):
    team = tmp_path / "team.git"
    config = {**base_config(moto_reset), "git": {"remote": str(team)}}
    project = Project.create(tmp_path, aws_env, config)
    assert_user_error(project.inv("iam.env", "--name", "stg"), "No git remote of this checkout points at the "
                      f"team's repository {team}", "config field git.remote", f"git remote add upstream {team}")
    project.add_upstream(team)
    path = project.path / "roots" / "environment" / "main.tf"  # a colleague merged into the team's staging...
    path.write_text(path.read_text() + "\n# a colleague's change\n")
    git(project.path, "commit", "-q", "-am", "colleague's change")
    git(project.path, "push", "-q", "upstream", "staging")
    merged = git(project.path, "rev-parse", "HEAD")
    git(project.path, "reset", "-q", "--hard", "HEAD~1")  # ...that this checkout and the fork (origin) lack
    refused = project.inv("iam.env", "--name", "stg")
    assert_user_error(refused, f"upstream/staging is {merged[:12]}", "remote upstream",
                      "git pull --ff-only upstream staging")
    assert buckets(aws) == []


def test_a_configuration_that_is_not_the_committed_one_is_refused_for_a_real_account(tmp_path, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(None))  # a real account: no endpoint_url
    path = project.path / "config" / "environments.yml"
    path.write_text(path.read_text() + "# edited\n")
    assert_user_error(project.inv("iam.env", "--name", "stg"), "config-not-committed", "uncommitted changes")
    outside = tmp_path / "elsewhere.yml"
    outside.write_text(json.dumps(base_config(None)))
    git(project.path, "checkout", "--", "config")
    result = project.inv("iam.env", "--name", "stg", env={**project.env, "RUNBOOK_CONFIG": str(outside)})
    assert_user_error(result, "config-not-committed", "nonprod")


def test_a_record_without_its_state_and_without_the_lock_table_is_no_first_deploy(project, aws):
    # the lock table gone and the state object never there (or deleted): the way back to the state once scanned the
    # missing table and stopped on DynamoDB's ResourceNotFoundException instead of the backend finding
    from tests.runs import make_backend

    make_backend(aws("s3").meta.endpoint_url, table=False)
    from runbook.records import Record

    aws("ssm").put_parameter(Name=STG_RECORD, Type="String", Value=Record.create(
        fingerprint="f" * 64, commit="c" * 40, branch="staging", applied_by="arn:aws:iam::123456789012:user/x",
        scope="stg", trees={}, inputs="").to_json())
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"The DynamoDB lock table {TABLE}", "NOT a first deploy",
                      "environment stg has an applied record", "inv iam.bootstrap --env stg --dry-run")
    assert "ResourceNotFound" not in result.all and "Terraform: plan" not in result.out
