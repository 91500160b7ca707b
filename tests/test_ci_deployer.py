"""The CI deployer without long-lived keys: the pipeline's credentials step and the role chain.

``.circleci/aws-credentials.sh ENV`` is run as a CircleCI step runs it (a fake
``CIRCLE_OIDC_TOKEN_V2``, ``AWS_ROLE_ARN`` from the context, ``$BASH_ENV``); then a later
step, a fresh shell that sources ``$BASH_ENV``, reaches AWS (moto) through the standard
web-identity variables, as boto3 reads them, with the deployer role's policy enforced.

What moto checks, and what it does not (moto 5.2, server mode, IAM enforcement switched
on with ``/moto-api/reset-auth`` after the setup):
- AssumeRoleWithWebIdentity: nothing. moto neither verifies the token (signature, issuer,
  audience, expiry) nor evaluates the role's trust policy (it does not even require the
  role to exist). The trust policy's conditions are checked by the static tests in
  tests/test_iam_modules.py, against IAM's documented StringEquals/StringLike semantics.
- After it: the signature and session token of every request (the assumed-role keys), and
  the role's attached and inline policies, by action (wildcards), with the resource ARN for
  S3 (bucket and object; but not every S3 operation: PutPublicAccessBlock, for one, is
  answered without a check, so the static tests cover it) and for IAM calls naming an
  existing role. Other services (SSM, Lambda, CloudFormation, Logs) are checked against
  the resource "*" only, so a grant scoped to an ARN is not honoured there and is not
  tested here. Of conditions, only StringEquals is evaluated, and only for sts:ExternalId;
  identity-policy conditions such as iam:PassedToService are ignored. GetCallerIdentity is
  always allowed.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from runbook import config as configuration
from runbook.errors import RunbookError
from runbook.scopes import Scope
from tests.test_iam_modules import (
    OIDC_INPUTS,
    module_text,
    oidc_locals_of,
    policy_json,
    policy_statements,
    trust_statement_of,
    v2_subject,
)

SCRIPT = Path(__file__).resolve().parents[1] / ".circleci" / "aws-credentials.sh"
NONPROD = "123456789012"
ROLE_ARN = f"arn:aws:iam::{NONPROD}:role/acme-api/ci/acme-api-circleci-deployer"


def fake_token(branch: str = "staging") -> str:
    """An unsigned JWT shaped like CIRCLE_OIDC_TOKEN_V2 (moto does not verify tokens)."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    org = OIDC_INPUTS["circleci_org_id"]
    claims = {"iss": f"https://oidc.circleci.com/org/{org}", "aud": org, "sub": v2_subject(branch),
              "oidc.circleci.com/project-id": OIDC_INPUTS["circleci_project_id"]}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture
def job_env(aws_env: dict, tmp_path: Path) -> dict:
    """A CircleCI job's environment with the context of a migrated account: a token, a role, no key."""
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), BASH_ENV=str(tmp_path / "bash_env"), CIRCLE_JOB="deploy-stg", CIRCLE_BUILD_NUM="42",
               CIRCLE_OIDC_TOKEN_V2=fake_token(), AWS_ROLE_ARN=ROLE_ARN)
    Path(env["BASH_ENV"]).write_text("")
    return env


def run_step(env: dict, name: str = "stg") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), name], env=env, capture_output=True, text=True, timeout=60,
                          cwd=SCRIPT.parents[1])


def exported(env: dict) -> dict:
    """What the step left in $BASH_ENV for the job's later steps, as a fresh shell sees it."""
    done = subprocess.run(["bash", "-c", 'set -a; . "$BASH_ENV"; env -0'], env=env, capture_output=True, check=True)
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith("AWS_")}


# --- the pipeline step --------------------------------------------------------------------------


def test_oidc_step_writes_the_token_file_and_the_web_identity_variables(job_env: dict, tmp_path: Path):
    done = run_step(job_env)
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / "home" / ".aws-oidc" / "token"
    later_step = exported(job_env)
    assert later_step["AWS_ROLE_ARN"] == ROLE_ARN
    assert later_step["AWS_WEB_IDENTITY_TOKEN_FILE"] == str(token_file)
    assert later_step["AWS_ROLE_SESSION_NAME"] == "circleci-deploy-stg-42"
    assert "AWS_ACCESS_KEY_ID" not in later_step
    assert token_file.read_text() == job_env["CIRCLE_OIDC_TOKEN_V2"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert f"web identity (CircleCI OIDC) as {ROLE_ARN}" in done.stderr
    assert job_env["CIRCLE_OIDC_TOKEN_V2"] not in done.stdout + done.stderr + Path(job_env["BASH_ENV"]).read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}, "still holds AWS_ACCESS_KEY_ID"),
        ({"CIRCLE_OIDC_TOKEN_V2": None}, "CircleCI issues it only to jobs that use a context"),
        ({"AWS_ROLE_ARN": None}, "terraform output -raw deployer_role_arn"),
        ({"AWS_ROLE_ARN": "acme-api-circleci-deployer"}, "is not an IAM role ARN"),
    ],
    ids=["key-left-in-context", "no-token", "no-role", "not-an-arn"],
)
def test_oidc_step_refuses_what_would_not_be_the_role(change: dict, expected: str, job_env: dict, tmp_path: Path):
    env = {k: v for k, v in {**job_env, **change}.items() if v is not None}
    done = run_step(env)
    assert done.returncode == 2, done.stderr
    assert expected in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert Path(env["BASH_ENV"]).read_text() == "", "nothing exported for the next steps"
    assert not (tmp_path / "home" / ".aws-oidc").exists()


def test_oidc_step_refuses_a_role_of_another_account(job_env: dict):
    done = run_step(job_env, "prod")
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert f"is a role of account {NONPROD}, but environment prod deploys into account prod (210987654321)" in text


def test_step_for_an_unknown_environment_says_so(job_env: dict):
    done = run_step(job_env, "stag")
    assert done.returncode == 2
    assert "There is no environment 'stag'" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def legacy_config(tmp_path: Path, repo_root: Path) -> Path:
    data = yaml.safe_load((repo_root / "config" / "environments.yml").read_text())
    data["circleci"] = {"project_slug": "gh/acme/acme-api", "workflow": "build-test-deploy", "deployer": "user"}
    path = tmp_path / "legacy.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_legacy_user_step_needs_the_key_and_exports_nothing(job_env: dict, legacy_config: Path):
    env = {**job_env, "RUNBOOK_CONFIG": str(legacy_config)}
    del env["AWS_ROLE_ARN"], env["CIRCLE_OIDC_TOKEN_V2"]
    done = run_step(env)
    assert done.returncode == 2 and "lacks AWS_ACCESS_KEY_ID" in done.stderr
    done = run_step({**env, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-value"})
    assert done.returncode == 0, done.stderr
    assert "legacy deployer user" in done.stderr and "secret-value" not in done.stderr
    assert Path(env["BASH_ENV"]).read_text() == ""


# --- the role chain against moto --------------------------------------------------------------

PROBE = r"""
import json, sys
import botocore.exceptions
from runbook import aws, config

import dataclasses, os
# moto stands in for AWS: the account gets its URL as endpoint_url (the runbook ignores AWS_ENDPOINT_URL
# from the environment by design; the job's role chain comes through the web-identity variables)
account = dataclasses.replace(config.load().environment("stg").account, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
session = aws.session(account, use_profile=False)
out = {"identity": aws.caller_identity(session, account).arn}
s3, iam = aws.client(session, "s3", account), aws.client(session, "iam", account)
own, theirs = "acme-api--stg-deploy-1a2b3c", "acme-api-admin--stg-deploy-1a2b3c"
calls = {
    "put artifact": lambda: s3.put_object(Bucket=own, Key="serverless/stg/code.zip", Body=b"zip"),
    "list artifacts": lambda: s3.list_objects_v2(Bucket=own),
    "create deploy bucket": lambda: s3.create_bucket(
        Bucket="acme-api--dev-deploy-9f8e7d", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}),
    "put artifact into acme-api-admin's bucket": lambda: s3.put_object(Bucket=theirs, Key="x", Body=b"x"),
    "put bucket policy": lambda: s3.put_bucket_policy(Bucket=own, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                               "Resource": f"arn:aws:s3:::{own}/*"}]})),
    "get own lambda role": lambda: iam.get_role(RoleName="acme-api-stg-lambda-api"),
    "get acme-api-admin's lambda role": lambda: iam.get_role(RoleName="acme-api-admin-stg-lambda-api"),
    "get the deployer role": lambda: iam.get_role(RoleName="acme-api-circleci-deployer"),
    "create a role": lambda: iam.create_role(RoleName="acme-api-stg-lambda-evil", AssumeRolePolicyDocument="{}"),
}
results = {}
for name, call in calls.items():
    try:
        call()
        results[name] = "allowed"
    except botocore.exceptions.ClientError as exc:
        results[name] = exc.response["Error"]["Code"]
out["results"] = results
json.dump(out, sys.stdout)
"""


def _moto_auth(endpoint: str, count: str) -> None:
    """Switch moto's IAM enforcement: on after *count* more requests, or off with "inf"."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def deployer_in_moto(moto_reset: str, repo_root: Path, terraform_bin: Path, tmp_path: Path):
    """moto with what the account and environment roots of acme-api create (the documents rendered
    from the HCL, the locals evaluated by Terraform), plus a neighbouring project acme-api-admin."""
    import boto3

    local_values = oidc_locals_of(repo_root, terraform_bin, tmp_path / "locals")
    trust = policy_json([trust_statement_of(repo_root, local_values)])
    account_tf = module_text(repo_root, Path("iam/terraform/account-specific/main"))
    permissions = policy_json(policy_statements(account_tf, "deployer", {k: str(v) for k, v in local_values.items()}))

    admin = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1")
    iam, s3 = admin.client("iam", endpoint_url=moto_reset), admin.client("s3", endpoint_url=moto_reset)
    iam.create_open_id_connect_provider(Url=f"https://{local_values['circleci_issuer']}",
                                        ClientIDList=[OIDC_INPUTS["circleci_org_id"]], ThumbprintList=["0" * 40])
    iam.create_role(RoleName="acme-api-circleci-deployer", Path="/acme-api/ci/", AssumeRolePolicyDocument=trust)
    policy = iam.create_policy(PolicyName="acme-api-circleci-deployer", PolicyDocument=permissions)["Policy"]
    iam.attach_role_policy(RoleName="acme-api-circleci-deployer", PolicyArn=policy["Arn"])
    lambda_trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    for project in ("acme-api", "acme-api-admin"):
        iam.create_role(RoleName=f"{project}-stg-lambda-api", Path=f"/{project}/lambda/",
                        AssumeRolePolicyDocument=lambda_trust)
        s3.create_bucket(Bucket=f"{project}--stg-deploy-1a2b3c",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    _moto_auth(moto_reset, "1")  # the one unsigned AssumeRoleWithWebIdentity, then enforcement
    try:
        yield moto_reset
    finally:
        _moto_auth(moto_reset, "inf")


def test_role_chain_from_the_oidc_token_to_the_deployers_rights(deployer_in_moto: str, job_env: dict):
    done = run_step(job_env)
    assert done.returncode == 0, done.stderr
    later_step = {**job_env, "AWS_ENDPOINT_URL": deployer_in_moto}
    probe = subprocess.run(["bash", "-c", f'set -a; . "$BASH_ENV"; exec {sys.executable} -c "$PROBE"'],
                           env={**later_step, "PROBE": PROBE, "PYTHONPATH": str(SCRIPT.parents[1])},
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["identity"] == f"arn:aws:sts::{NONPROD}:assumed-role/acme-api-circleci-deployer/circleci-deploy-stg-42"
    assert seen["results"] == {
        "put artifact": "allowed",
        "list artifacts": "allowed",
        "create deploy bucket": "allowed",
        "put artifact into acme-api-admin's bucket": "AccessDenied",
        "put bucket policy": "AccessDenied",
        "get own lambda role": "allowed",
        "get acme-api-admin's lambda role": "AccessDenied",
        "get the deployer role": "AccessDenied",
        "create a role": "AccessDenied",
    }


# --- the configuration switch -----------------------------------------------------------------


def _config(tmp_path: Path, repo_root: Path, **circleci) -> Path:
    data = yaml.safe_load((repo_root / "config" / "environments.yml").read_text())
    data["circleci"] = {"project_slug": "gh/acme/acme-api", "workflow": "build-test-deploy", **circleci}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_account_scope_passes_the_deployer_inputs_with_the_accounts_branches():
    cfg = configuration.load()
    nonprod, prod = (Scope.of_account(cfg, cfg.accounts[name]).tf_vars() for name in ("nonprod", "prod"))
    assert nonprod["ci_deployer"] == prod["ci_deployer"] == "oidc"
    assert json.loads(nonprod["deploy_branches"]) == ["develop", "staging", "test"]
    assert json.loads(prod["deploy_branches"]) == ["prod"], "the prod role trusts the prod branch only"
    assert nonprod["circleci_vcs_origin"] == "github.com/acme/acme-api"
    assert nonprod["circleci_org_id"] == cfg.circleci.org_id
    assert nonprod["circleci_project_id"] == cfg.circleci.project_id
    env_vars = Scope.of_environment(cfg, cfg.environment("stg")).tf_vars()
    assert not {"ci_deployer", "deploy_branches"} & set(env_vars)


def test_without_the_switch_the_deployer_stays_the_legacy_user(tmp_path: Path, repo_root: Path):
    cfg = configuration.load(_config(tmp_path, repo_root))
    assert cfg.circleci.deployer == "user"
    variables = Scope.of_account(cfg, cfg.accounts["nonprod"]).tf_vars()
    assert variables == {"project": "acme-api", "account_id": NONPROD, "region": "eu-west-1", "ci_deployer": "user"}


@pytest.mark.parametrize(
    ("circleci", "expected"),
    [
        ({"deployer": "oidc", "project_id": "5e4d3c2b-1a09-4f8e-a7d6-c5b4a3928170"},
         "field circleci: the key 'org_id' is missing"),
        ({"deployer": "oidc", "org_id": "my-org", "project_id": "5e4d3c2b-1a09-4f8e-a7d6-c5b4a3928170"},
         "field circleci.org_id: 'my-org' is not a CircleCI organization"),
        ({"deployer": "keys"}, "field circleci.deployer: 'keys' is not one of ['oidc', 'user']"),
        ({"deployer": "oidc", "org_id": OIDC_INPUTS["circleci_org_id"],
          "project_id": OIDC_INPUTS["circleci_project_id"], "project_slug": "circleci/8a6b3c1e/5e4d3c2b"},
         "field circleci.vcs_origin"),
    ],
    ids=["no-org", "org-not-a-uuid", "unknown-mode", "vcs-origin-not-derivable"],
)
def test_configuration_refuses_an_oidc_deployer_it_cannot_pin(circleci: dict, expected: str, tmp_path, repo_root):
    with pytest.raises(RunbookError) as caught:
        configuration.load(_config(tmp_path, repo_root, **circleci))
    assert expected in caught.value.message


@pytest.mark.parametrize("project", ["acme--api", "acme-"])
def test_configuration_refuses_project_names_that_break_the_delimiter(project: str, tmp_path: Path, repo_root: Path):
    path = _config(tmp_path, repo_root)
    data = yaml.safe_load(path.read_text())
    data["project"] = project
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RunbookError) as caught:
        configuration.load(path)
    assert "field project" in caught.value.message
