"""`inv iam.env` and `inv iam.account` run as a user runs them, against moto and real Terraform."""

from __future__ import annotations

import copy
import json

import pytest

from tests.project import ACCOUNT_ID, Project, base_config, git

STG_KEY = "acme-api/iam/env/stg.tfstate"
ACCOUNT_KEY = "acme-api/iam/account.tfstate"
BUCKET = f"acme-api-tfstate-{ACCOUNT_ID}"
TABLE = "acme-api-tf-locks"


def assert_user_error(result, *needles: str) -> None:
    """Non-zero exit, no traceback, and every needle in the output."""
    assert result.code != 0, result.all
    assert "Traceback" not in result.all, result.all
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"


def delete_state_bucket(s3) -> None:
    """Delete the versioned state bucket the way an operator must: every version first."""
    versions = s3.list_object_versions(Bucket=BUCKET)
    for item in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"], VersionId=item["VersionId"])
    s3.delete_bucket(Bucket=BUCKET)


def bucket_names(client) -> list[str]:
    return [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.fixture
def s3(moto_reset, aws_credentials):
    import boto3

    return boto3.client("s3", endpoint_url=moto_reset, region_name="eu-west-1")


@pytest.fixture
def ssm(moto_reset, aws_credentials):
    import boto3

    return boto3.client("ssm", endpoint_url=moto_reset, region_name="eu-west-1")


def record(ssm, name: str) -> dict | None:
    try:
        return json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


# -- the happy path ----------------------------------------------------------------------------


@pytest.mark.terraform
def test_env_applies_fixture_root_end_to_end(project, s3):
    result = project.inv("iam.env", "--name", "stg")
    assert result.code == 0, result.all
    # who and where is printed before anything changes
    assert f"in {ACCOUNT_ID} for stg" in result.out
    assert result.out.index(f"in {ACCOUNT_ID} for stg") < result.out.index("Terraform: plan")
    # the backend was created with the protections a state bucket needs
    assert BUCKET in bucket_names(s3)
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    # the state object holds the applied outputs
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    assert state["outputs"]["lambda_role_names"]["value"] == ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]
    assert "0 to add, 0 to change, 0 to destroy" in result.out


@pytest.mark.terraform
def test_successful_apply_is_recorded(project, ssm):
    result = project.inv("iam.env", "--name", "stg")
    assert result.code == 0, result.all
    applied = record(ssm, "/acme-api/iam/env/stg")
    assert applied is not None
    assert applied["commit"] == git(project.path, "rev-parse", "HEAD")
    assert applied["branch"] == "staging"
    assert applied["applied_by"].endswith(":user/moto")
    assert applied["outputs"]["lambda_role_names"] == ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]
    assert len(applied["fingerprint"]) == 64
    assert record(ssm, "/acme-api/iam/account") is None


@pytest.mark.terraform
def test_second_run_leaves_backend_alone_and_applies_nothing_new(project, s3):
    assert project.inv("iam.env", "--name", "stg").code == 0
    s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "owner", "Value": "platform"}]})
    again = project.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert f"bucket {BUCKET} and table {TABLE} verified on" in again.out
    assert "the plan has no changes" in again.out
    assert "acme-api-tfstate" in again.out
    assert s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"] == [{"Key": "owner", "Value": "platform"}]


@pytest.mark.terraform
def test_a_backend_deleted_since_the_last_run_is_reported_not_recreated(project, s3):
    import boto3

    assert project.inv("iam.env", "--name", "stg").code == 0
    delete_state_bucket(s3)
    boto3.client("dynamodb", endpoint_url=s3.meta.endpoint_url, region_name="eu-west-1").delete_table(TableName=TABLE)
    gone = project.inv("iam.env", "--name", "stg")
    assert_user_error(gone, "The Terraform backend has gone", BUCKET, "inv iam.bootstrap --env stg")
    again = project.inv("iam.env", "--name", "stg")
    assert_user_error(again, "do not exist", "not a first deploy", "environment stg has an applied record",
                      "inv iam.bootstrap --env stg")
    assert BUCKET not in bucket_names(s3)


@pytest.mark.terraform
def test_account_defaults_to_the_checked_out_environment(project, s3, ssm):
    result = project.inv("iam.account")
    assert result.code == 0, result.all
    assert "for stg" in result.out
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=ACCOUNT_KEY)["Body"].read())
    assert state["outputs"]["deployer_user_name"]["value"] == "acme-api-circleci-deployer"
    assert record(ssm, "/acme-api/iam/account")["scope"] == "account"


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_needs_no_credentials_and_lists_every_step(tmp_path, aws_env):
    env = {k: v for k, v in aws_env.items() if not k.startswith("AWS_")}
    project = Project.create(tmp_path, env, base_config(None), branch="main")
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert result.code == 0, result.all
    assert "Traceback" not in result.all
    for title in ("configuration", "git", "Terraform", "caller identity", "Backend", "plan", "Confirm", "apply"):
        assert title in result.out
    # the finding that would stop a real run, with its fix
    assert "would stop a real run" in result.out
    assert "git checkout staging" in result.out
    assert "DEPLOY_MODE=plan" in result.out and "TF_STATE_KEY=acme-api/iam/env/stg.tfstate" in result.out


def test_dry_run_masks_secrets(tmp_path, aws_env):
    env = {**aws_env, "AWS_SECRET_ACCESS_KEY": "SENTINEL-aws-secret-value-1234"}
    project = Project.create(tmp_path, env, base_config(None))
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert result.code == 0, result.all
    assert "SENTINEL-aws-secret-value-1234" not in result.all


def test_dry_run_touches_no_aws(project, s3):
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert result.code == 0, result.all
    assert BUCKET not in bucket_names(s3)


# -- user errors: exit non-zero, the fix named, nothing applied ------------------------------


def test_unknown_environment_lists_valid_names(project, s3):
    result = project.inv("iam.env", "--name", "stag")
    assert_user_error(result, "There is no environment 'stag'", "dev, stg, prod", "Did you mean 'stg'")
    assert BUCKET not in bucket_names(s3)


def test_name_with_shell_metacharacters_is_refused(project, s3):
    result = project.inv("iam.env", "--name", "stg;touch pwned")
    assert_user_error(result, "is not an environment name")
    assert not (project.path / "pwned").exists()
    assert BUCKET not in bucket_names(s3)


def test_no_name_on_a_branch_of_no_environment_names_the_flag(tmp_path, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(None), branch="main")
    result = project.inv("iam.env", "--dry-run")
    assert_user_error(result, "is not the branch of any environment", "--name dev")


def test_wrong_branch_stops_before_aws(tmp_path, moto_reset, aws_env, s3):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset), branch="main")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "git checkout staging")
    assert BUCKET not in bucket_names(s3)


@pytest.mark.terraform
def test_skip_branch_check_is_loud(tmp_path, moto_reset, aws_env, s3):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset), branch="main")
    result = project.inv("iam.env", "--name", "stg", "--skip-branch-check")
    assert result.code == 0, result.all
    assert "BRANCH CHECK OVERRIDDEN" in result.out


def test_dirty_tree_is_refused(project, s3):
    (project.path / "roots" / "environment" / "extra.tf").write_text("# not committed\n")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "uncommitted changes", "extra.tf", "git stash")
    assert BUCKET not in bucket_names(s3)


def test_ignored_file_in_the_root_module_is_refused(project, s3):
    (project.path / ".git" / "info" / "exclude").write_text("override.tf\n")
    (project.path / "roots" / "environment" / "override.tf").write_text('locals {\n  extra = "not committed"\n}\n')
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "git does not track in HEAD (roots/environment/override.tf)", "git add -f")
    assert BUCKET not in bucket_names(s3)


def test_head_behind_remote_is_refused(project, s3, tmp_path):
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "staging", str(project.remote), str(other))
    git(other, "-c", "user.email=a@b", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "merged")
    git(other, "push", "-q")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "is not what was merged", "git pull --ff-only")
    assert BUCKET not in bucket_names(s3)


def test_no_credentials(project, s3):
    env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = project.inv("iam.env", "--name", "stg", env=env)
    assert_user_error(result, "No AWS credentials", "aws sso login")
    assert BUCKET not in bucket_names(s3)


def test_credentials_for_another_account(tmp_path, moto_reset, aws_env, s3):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset, account_id="111111111111"))
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"credentials are for account {ACCOUNT_ID}", "111111111111", "nothing was changed")
    assert "acme-api-tfstate-111111111111" not in bucket_names(s3)


def test_rejected_credentials(project, s3, monkeypatch):
    # moto checks access keys against its IAM once authentication is switched on:
    # the fake key is unknown there, exactly as an expired or revoked key is to AWS.
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "rejected the credentials", "InvalidClientTokenId", "fresh credentials")
    monkeypatch.undo()
    assert BUCKET not in bucket_names(s3)


def test_terraform_missing(project, s3, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "bash"):
        (bin_dir / tool).symlink_to(__import__("shutil").which(tool))
    python_dir = str(__import__("pathlib").Path(__import__("sys").executable).parent)
    (bin_dir / "inv").symlink_to(python_dir + "/inv")
    env = {**project.env, "PATH": str(bin_dir)}
    result = project.inv("iam.env", "--name", "stg", env=env)
    assert_user_error(result, "terraform is not on PATH", "requirements-dev.txt")
    assert BUCKET not in bucket_names(s3)


def test_terraform_too_old(project, s3):
    config = base_config(s3.meta.endpoint_url)
    config["terraform"]["required_version"] = ">= 1.5.0"
    project.commit_config(config)
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "Terraform 1.0.3", "does not satisfy", ">= 1.5.0")
    assert BUCKET not in bucket_names(s3)


@pytest.mark.terraform
def test_failing_plan_applies_nothing(project, s3, ssm):
    config = base_config(s3.meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/failing-plan"
    project.commit_config(config)
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "plan of environment stg failed", "inv iam.env --name stg")
    assert "Terraform: apply" not in result.out
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert record(ssm, "/acme-api/iam/env/stg") is None


@pytest.mark.terraform
def test_failing_apply_is_reported_with_resume_command(project, s3, ssm):
    config = base_config(s3.meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/failing-apply"
    project.commit_config(config)
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "apply to environment stg failed", "resume with `inv iam.env --name stg`")
    assert record(ssm, "/acme-api/iam/env/stg") is None


@pytest.mark.terraform
def test_protected_environment_needs_confirmation(tmp_path, moto_reset, aws_env, s3):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset), branch="prod")
    result = project.inv("iam.env", "--name", "prod")
    assert_user_error(result, "no terminal to ask", "--yes")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    confirmed = project.inv("iam.env", "--name", "prod", "--yes")
    assert confirmed.code == 0, confirmed.all
    assert "protected" in confirmed.out


def test_missing_root_module_is_a_finding_of_the_dry_run(project, s3):
    config = base_config(s3.meta.endpoint_url)
    config["terraform"]["roots"]["environment"] = "roots/nope"
    project.commit_config(config)
    dry = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert dry.code == 0 and "would stop a real run" in dry.out and "roots/nope is not a Terraform root" in dry.out
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "roots/nope is not a Terraform root module folder", "terraform.roots.environment")
    assert BUCKET not in bucket_names(s3), "nothing is created before the root module is known to exist"


def test_invalid_config_names_line_and_field(project):
    config = copy.deepcopy(base_config(None))
    config["environments"]["stg"]["brnach"] = config["environments"]["stg"].pop("branch")
    project.commit_config(config)
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "field environments.stg.brnach: unknown key", "did you mean 'branch'", "line ")
