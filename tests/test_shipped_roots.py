"""The shipped root modules (iam/terraform/*/main) applied for real: the runbook's own commands, the real
hashicorp/aws provider from a filesystem mirror (tests/conftest.py: provider_mirror), moto, real git, on
Terraform 1.0.3 and 1.11.4. Then the pipeline's gate, run as a CircleCI job runs it: the OIDC step
(.circleci/aws-credentials.sh) and ``inv ci.gate`` as the deployer role the account root created.

What moto does not do, and what is tested directly instead (said where it happens below):
- it does not evaluate a role's trust policy on AssumeRoleWithWebIdentity, nor verify the token: the applied
  trust document is read back and its conditions evaluated as IAM documents them;
- it checks identity policies against the resource "*" only for SSM (a grant scoped to an ARN is not
  honoured): the applied deployer policy is read back and each call the gate made is matched against it.

Few and slow on purpose (the provider is a 700 MB binary): everything a user relies on is asserted in one
story per Terraform version. The stories where the IAM content does not matter use the fixture roots.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.aws_proxy import AwsProxy
from tests.circleci_standin import job
from tests.conftest import shipped_roots_applied
from tests.pipeline_runner import PipelineRunner
from tests.project import ACCOUNT_ID, Project, base_config, git
from tests.test_ci_deployer import SCRIPT, fake_token
from tests.test_iam_modules import ISSUER, OIDC_INPUTS, USER_ID, admits, iam_like, v2_subject

ROOTS = {"account": "iam/terraform/account-specific/main", "environment": "iam/terraform/environment-specific/main"}
DEPLOYER = "acme-api-circleci-deployer"
LAMBDA_ROLES = ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]


@pytest.fixture
def proxy(moto_reset: str, monkeypatch: pytest.MonkeyPatch):
    """moto, with AWS's managed policies (the environment root attaches AWSLambdaBasicExecutionRole; moto reads
    the setting when a test first touches IAM, in this process), behind the proxy that notes each call."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    with AwsProxy(moto_reset) as proxy:
        yield proxy


@pytest.fixture
def shipped(tmp_path: Path, proxy: AwsProxy, aws_env: dict, real_provider: Path, ci) -> Project:
    """A clone whose configuration names the shipped roots and an OIDC deployer, its accounts at moto."""
    config = base_config(proxy.url)
    config["terraform"]["roots"] = dict(ROOTS)
    del config["terraform"]["modules"]
    config["environments"]["stg"]["deploy_command"] = "true"
    config["circleci"].update(deployer="oidc", org_id=OIDC_INPUTS["circleci_org_id"],
                              project_id=OIDC_INPUTS["circleci_project_id"])
    return Project.create(tmp_path, {**aws_env, **ci.env(), "TF_CLI_CONFIG_FILE": str(real_provider)}, config)


def statements(document) -> list[dict]:
    """The statements of a policy document as IAM returns it (URL-encoded JSON, or already decoded by boto3)."""
    document = json.loads(unquote(document)) if isinstance(document, str) else document
    found = document["Statement"]
    return found if isinstance(found, list) else [found]


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def allows(policy: list[dict], action: str, resource: str) -> bool:
    """Whether an Allow statement of *policy* grants *action* on *resource* (IAM wildcards; the policy has no Deny
    and no condition on these actions)."""
    return any(s["Effect"] == "Allow" and any(iam_like(a, action) for a in listed(s["Action"]))
               and any(iam_like(r, resource) for r in listed(s["Resource"])) for s in policy)


def permission_of(request, iam) -> tuple[str, str] | None:
    """(IAM action, resource ARN) that one AWS call as the proxy saw it needs, the way IAM authorizes it; None for STS
    (GetCallerIdentity needs no permission; AssumeRoleWithWebIdentity is the trust's). *iam*: an administrator's
    client, to learn a role's ARN (its path) from its name. Fails the test on a call it does not know."""
    form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
    fields = json.loads(request.body or b"{}") if request.target else {}
    if request.service == "sts" or form.get("Action") == "AssumeRoleWithWebIdentity":
        return None
    if form.get("Action") == "GetUser" and "UserName" not in form:
        return None  # the AWS provider asking who it is; for a role AWS refuses it, and the provider goes on
    if request.service == "ssm":
        return f"ssm:{request.target.split('.')[-1]}", \
            f"arn:aws:ssm:eu-west-1:{ACCOUNT_ID}:parameter/{fields['Name'].lstrip('/')}"
    if request.service == "dynamodb":
        return f"dynamodb:{request.target.split('.')[-1]}", \
            f"arn:aws:dynamodb:eu-west-1:{ACCOUNT_ID}:table/{fields['TableName']}"
    if request.service == "s3":
        path = urlsplit(request.path)
        bucket, _, key = path.path.lstrip("/").partition("/")
        if request.method in ("GET", "HEAD") and key:
            return "s3:GetObject", f"arn:aws:s3:::{bucket}/{unquote(key)}"
        if request.method in ("GET", "HEAD"):
            return "s3:ListBucket", f"arn:aws:s3:::{bucket}"
    if request.service == "iam":
        action = form["Action"]
        if "RoleName" in form:
            return f"iam:{action}", iam.get_role(RoleName=form["RoleName"])["Role"]["Arn"]
        if "PolicyArn" in form:
            return f"iam:{action}", form["PolicyArn"]
        if "OpenIDConnectProviderArn" in form:
            return f"iam:{action}", form["OpenIDConnectProviderArn"]
        if "UserName" in form:
            return f"iam:{action}", f"arn:aws:iam::{ACCOUNT_ID}:user/{form['UserName']}"
    raise AssertionError(f"an AWS call this test does not know: {request.method} {request.path} {request.action}")


def run_as_ci_job(shipped: Project, tmp_path: Path, proxy: AwsProxy, command: list[str], **variables: str):
    """Run *command* in a later step of a CircleCI job, after .circleci/aws-credentials.sh (its arguments in
    ``variables["STEP"]``), with the job's token for *variables["BRANCH"]* and the context's *variables*."""
    job_env = {k: v for k, v in shipped.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    home = tmp_path / f"home-{variables['CIRCLE_JOB']}"
    job_env.update(HOME=str(home), BASH_ENV=str(home / "bash_env"), CIRCLE_BUILD_NUM="7",
                   CIRCLE_OIDC_TOKEN_V2=fake_token(variables.pop("BRANCH")), AWS_ENDPOINT_URL=proxy.url, **variables)
    home.mkdir()
    Path(job_env["BASH_ENV"]).write_text("")
    step = subprocess.run(["bash", str(SCRIPT), *job_env.pop("STEP").split()], env=job_env, cwd=shipped.path,
                          capture_output=True, text=True, timeout=60)
    assert step.returncode == 0, step.stderr
    return subprocess.run(["bash", "-c", 'set -a; . "$BASH_ENV"; exec "$@"', "step", *command], env=job_env,
                          cwd=shipped.path, capture_output=True, text=True, timeout=300)


def trust_lambda() -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@contextlib.contextmanager
def moto_auth(endpoint: str, *, unchecked: int):
    """moto checks every request's signature and the caller's policies, after *unchecked* more requests, until
    the block ends (moto's /moto-api/reset-auth).

    What moto checks then (moto 5.2, server mode): the assumed-role keys' signature and session token; the role's
    attached and inline policies by action (wildcards), with the resource ARN for S3 and for IAM calls naming an
    existing role; SSM, Lambda, CloudFormation and Logs against the resource "*" only. It does not evaluate
    identity-policy conditions (iam:PassedToService), nor a trust policy, nor the web identity token.
    """
    def reset(count: str) -> None:
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    reset(str(unchecked))
    try:
        yield
    finally:
        reset("inf")


# Run as the deployer role in a later step of the job: what it may and may not do.
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


PROBE_EXPECTED = {
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


def apply_through_the_runbook(shipped: Project, ci, line: str) -> None:
    """1.0.3: the two IAM steps by hand; 1.11.4: `inv release` while the merge's pipeline waits at its gate,
    which then opens, and the deploy runs."""
    if line == "1.0":
        for args in (("iam.account", "--env", "stg"), ("iam.env", "--name", "stg")):
            done = shipped.inv(*args)
            assert done.code == 0, done.all
        return
    pipeline = ci.add_pipeline("gh/acme/acme-api", "staging", git(shipped.path, "rev-parse", "HEAD"), workflows=[
        ("build-test-deploy", "running", [job("test", "running"), job("iam-gate-stg", "blocked", requires=["test"]),
                                          job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
    with PipelineRunner(ci, shipped, ("--timeout-s", "300", "--poll-s", "0.5", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: pipeline.workflows[0].job("iam-gate-stg").status == "running", what="the gate")
        released = shipped.inv("release", "--env", "stg", "--yes", "--poll-s", "2", timeout=300)
        runner.wait_for(lambda: pipeline.workflows[-1].status == "success", what="the deploy")
    assert released.code == 0, released.all
    assert "never applied" in runner.output("iam-gate-stg")


def hand_changes_are_found_as_drift_and_put_back(shipped: Project, iam, proxy: AwsProxy, tmp_path: Path) -> None:
    """Someone attaches a policy and widens a trust by hand: `inv iam.drift` names both (exit 2) and the command that
    puts them back; `inv iam.env` does, and drift is clean again (exit 0)."""
    iam.attach_role_policy(RoleName="acme-api-stg-lambda-api", PolicyArn="arn:aws:iam::aws:policy/ReadOnlyAccess")
    wider = trust_lambda()
    wider["Statement"][0]["Principal"]["Service"] = ["lambda.amazonaws.com", "ec2.amazonaws.com"]
    iam.update_assume_role_policy(RoleName="acme-api-stg-lambda-worker", PolicyDocument=json.dumps(wider))
    found = shipped.inv("iam.drift", "--env", "stg", "--json")
    assert found.code == 2, found.all
    assert "DRIFT in environment stg" in found.err and "DRIFT in account" not in found.err
    assert "To put it back as the code says (from branch staging): inv iam.env --name stg" in found.err
    document = json.loads(found.out)
    account, stg = document["scopes"]
    assert document["drift"] and (account["differences"], account["fix"]) == ([], None)
    assert stg["fix"] == "inv iam.env --name stg" and {
        'aws_iam_role.lambda["worker"]: update (assume_role_policy)',
        'aws_iam_role_policy_attachments_exclusive.lambda["api"]: update (policy_arns)'} <= set(stg["differences"])
    assert shipped.inv("iam.env", "--name", "stg").code == 0
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName="acme-api-stg-lambda-api")[
        "AttachedPolicies"]] == ["AWSLambdaBasicExecutionRole"]
    # the nightly check as CircleCI runs it: a job on a branch of no environment, as the read-only role; every AWS
    # call it and Terraform make is one the role's policy grants (moto would not check SSM's: matched here)
    reader = iam.get_role(RoleName="acme-api-circleci-iam-reader")["Role"]
    policy = statements(iam.get_role_policy(RoleName=reader["RoleName"], PolicyName="acme-api-circleci-iam-reader")[
        "PolicyDocument"])
    assert all(a.split(":")[1].startswith(("Get", "List", "Describe")) for s in policy for a in listed(s["Action"]))
    proxy.reset()
    clean = run_as_ci_job(shipped, tmp_path, proxy, [str(Path(sys.executable).parent / "inv"), "iam.drift", "--env",
                                                     "stg"], STEP="stg reader", BRANCH="feature/nightly",
                          CIRCLE_JOB="iam-drift-stg", AWS_READER_ROLE_ARN=reader["Arn"])
    assert clean.returncode == 0 and "No drift" in clean.stdout, clean.stdout + clean.stderr
    needed = {p for r in proxy.requests if r.client != "other" and (p := permission_of(r, iam)) is not None}
    assert ("s3:GetObject", "arn:aws:s3:::acme-api-tfstate-123456789012/acme-api/iam/env/stg.tfstate") in needed
    assert [p for p in sorted(needed) if not allows(policy, *p)] == []


@pytest.mark.terraform
def test_the_shipped_roots_apply_and_the_gate_opens_on_their_roles(shipped, proxy, aws, ci, terraform_release,
                                                                    tmp_path):
    apply_through_the_runbook(shipped, ci, terraform_release.line)
    iam = aws("iam")

    # the lambda roles exist, trust lambda.amazonaws.com alone, and are what the record names
    for name in LAMBDA_ROLES:
        role = iam.get_role(RoleName=name)["Role"]
        assert role["Path"] == "/acme-api/lambda/"
        (trust,) = statements(role["AssumeRolePolicyDocument"])
        assert (trust["Principal"], trust["Action"]) == ({"Service": "lambda.amazonaws.com"}, "sts:AssumeRole")
        attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        assert [a["PolicyName"] for a in attached] == ["AWSLambdaBasicExecutionRole"]
    record = json.loads(aws("ssm").get_parameter(Name="/acme-api/iam/env/stg")["Parameter"]["Value"])
    assert sorted(record["outputs"]["lambda_role_names"]) == LAMBDA_ROLES

    # CircleCI's identity provider, made without a thumbprint (no hashicorp/tls, nothing fetched at plan)
    (provider,) = iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
    assert provider["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{ISSUER}"
    assert iam.get_open_id_connect_provider(OpenIDConnectProviderArn=provider["Arn"])["ClientIDList"] == [
        OIDC_INPUTS["circleci_org_id"]]

    # The deployer role's trust as applied. moto does not evaluate it on AssumeRoleWithWebIdentity, so its
    # conditions are evaluated here the way IAM documents StringEquals/StringLike: this organisation's
    # audience, this project, a deploy branch of the account; any other branch or project is refused.
    deployer = iam.get_role(RoleName=DEPLOYER)["Role"]
    (trust,) = statements(deployer["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"Federated": provider["Arn"]}
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    applied = {"conditions": [{"test": test, "variable": variable, "values": listed(values)}
                              for test, pairs in trust["Condition"].items() for variable, values in pairs.items()]}
    org = OIDC_INPUTS["circleci_org_id"]
    assert admits(applied, {"aud": org, "sub": v2_subject("staging")})
    assert admits(applied, {"aud": org, "sub": v2_subject("develop")})
    assert not admits(applied, {"aud": org, "sub": v2_subject("prod")})  # prod is another account's branch
    assert not admits(applied, {"aud": org, "sub": v2_subject("feature/x")})
    assert not admits(applied, {"aud": org, "sub": v2_subject("staging", project=USER_ID)})
    assert not admits(applied, {"aud": "sts.amazonaws.com", "sub": v2_subject("staging")})

    if terraform_release.line == "1.11":  # drift: once is enough, on the faster Terraform
        hand_changes_are_found_as_drift_and_put_back(shipped, iam, proxy, tmp_path)

    # What the deploy and the least-privilege probe touch, made by an administrator before moto enforces IAM
    s3 = aws("s3")
    for project in ("acme-api", "acme-api-admin"):
        s3.create_bucket(Bucket=f"{project}--stg-deploy-1a2b3c",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    iam.create_role(RoleName="acme-api-admin-stg-lambda-api", Path="/acme-api-admin/lambda/",
                    AssumeRolePolicyDocument=json.dumps(trust_lambda()))

    # The gate as a CircleCI job runs it: the OIDC step, then `inv ci.gate` as the deployer role; then what that
    # role may and may not do, with moto checking each call's signature and the role's policy (moto_auth).
    proxy.reset()
    gate = run_as_ci_job(shipped, tmp_path, proxy, [str(Path(sys.executable).parent / "inv"), "ci.gate", "--env", "stg",
                                                    "--timeout-s", "60", "--poll-s", "0.5", "--settle-s", "0"],
                         STEP="stg", BRANCH="staging", CIRCLE_JOB="iam-gate-stg", AWS_ROLE_ARN=deployer["Arn"])
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "IAM gate open for stg" in gate.stdout, gate.stdout
    calls = [r for r in proxy.requests if r.client == "boto3"]
    assert calls[0].action == "AssumeRoleWithWebIdentity", "the gate ran as the deployer role"
    assert {r.action.split()[0] for r in calls[1:]} == {"GetParameter", "GetRole"}, [r.action for r in calls]
    # moto checks SSM grants against the resource "*" only (moto_auth): each call the gate made is matched against
    # the applied deployer policy here, with the ARN IAM would check
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy/{DEPLOYER}"
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    policy = statements(iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"])
    for request in calls[1:]:
        assert allows(policy, *permission_of(request, iam)), permission_of(request, iam)
    assert not allows(policy, "ssm:GetParameter", f"arn:aws:ssm:eu-west-1:{ACCOUNT_ID}:parameter/acme-api/stg/api/x")
    assert not allows(policy, "ssm:PutParameter", f"arn:aws:ssm:eu-west-1:{ACCOUNT_ID}:parameter/acme-api/iam/account")
    with moto_auth(proxy.url, unchecked=1):  # the one unsigned AssumeRoleWithWebIdentity
        probe = run_as_ci_job(shipped, tmp_path, proxy, [sys.executable, "-c", PROBE], STEP="stg", BRANCH="staging",
                              CIRCLE_JOB="deploy-stg", AWS_ROLE_ARN=deployer["Arn"], PYTHONPATH=str(shipped.path))
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["identity"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{DEPLOYER}/circleci-deploy-stg-7"
    assert seen["results"] == PROBE_EXPECTED
    shipped_roots_applied(terraform_release.version_hint)
