"""Nothing is applied that cannot then be recorded: run as a user runs it, against moto and real Terraform.

A configuration whose names AWS would refuse stops every command before any AWS or Terraform call;
an apply whose record SSM refuses says exactly what was and was not done, and the command it names
resumes cheaply (plan, no change, empty apply, record).
"""

from __future__ import annotations

import json
import shlex
import socket

import pytest

from tests.project import Project, base_config, git
from tests.test_iam_tasks import assert_user_error

RECORD = "/acme-api/iam/env/stg"
STG_KEY = "acme-api/iam/env/stg.tfstate"


def clients(endpoint: str):
    import boto3

    def make(service):
        return boto3.client(service, endpoint_url=endpoint, region_name="eu-west-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    return make("s3"), make("dynamodb"), make("ssm"), make("iam")


def assert_nothing_in_aws(endpoint: str) -> None:
    s3, dynamodb, ssm, iam = clients(endpoint)
    assert s3.list_buckets()["Buckets"] == []
    assert dynamodb.list_tables()["TableNames"] == []
    assert ssm.describe_parameters()["Parameters"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if "acme" in r["RoleName"]] == []


def assert_terraform_never_ran(project: Project) -> None:
    for root in ("roots/account", "roots/environment"):
        left = sorted(p.name for p in (project.path / root).iterdir() if p.name != "main.tf")
        assert left == [], f"Terraform left {left} in {root}"


@pytest.mark.parametrize("command", [("iam.env", "--name", "stg"), ("iam.account",),
                                     ("iam.env", "--name", "stg", "--dry-run"), ("release", "--env", "stg"),
                                     ("iam.status",), ("ci.gate", "--env", "stg")])
def test_a_project_name_ssm_refuses_stops_every_command_before_aws_and_terraform(tmp_path, moto_reset, aws_env,
                                                                                 command):
    config = base_config(moto_reset)
    config["project"] = "awsome-api"
    project = Project.create(tmp_path, aws_env, config)
    check = project.inv("config.check")
    assert_user_error(check, "field project", "may not begin with 'aws' or 'ssm'", "line 1, field project")
    result = project.inv(*command)
    assert_user_error(result, "field project", "may not begin with 'aws' or 'ssm'")
    assert "Terraform: plan" not in result.out
    assert_nothing_in_aws(moto_reset)
    assert_terraform_never_ran(project)


def test_a_refused_name_makes_no_network_call_at_all(tmp_path, aws_env):
    """The endpoint is a socket that only listens: a connection attempt would wait in its backlog."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        config = base_config(f"http://127.0.0.1:{listener.getsockname()[1]}")
        config["terraform"]["backend"] = {"state_bucket": "{project}_state_{account_id}"}
        project = Project.create(tmp_path, aws_env, config)
        result = project.inv("iam.env", "--name", "stg", timeout=60)
        assert_user_error(result, "field terraform.backend.state_bucket", "no '_'")
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert_terraform_never_ran(project)


def fill_versions(ssm, name: str, scope: str = "stg") -> None:
    """Versions of a valid record up to 100, the oldest labelled (as a team that labels releases might)."""
    value = json.dumps({"applied_at": "2024-06-01T12:00:00Z", "applied_by": "arn:aws:iam::123456789012:user/old",
                        "branch": "staging", "commit": "0" * 40, "fingerprint": "0" * 64, "outputs": {},
                        "scope": scope, "tool_version": "0.1.0"}, sort_keys=True)
    try:
        existing = ssm.get_parameter(Name=name)["Parameter"]["Version"]
    except ssm.exceptions.ParameterNotFound:
        existing = 0
    for _ in range(100 - existing):
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["first-release"])


@pytest.mark.terraform
def test_apply_done_record_refused_says_so_and_the_resume_is_an_empty_apply(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    s3, _, ssm, _ = clients(moto_reset)
    assert project.inv("iam.env", "--name", "stg").code == 0  # the backend, the state and a record exist
    fill_versions(ssm, RECORD)  # then the record reaches 100 versions, the oldest labelled

    first = project.inv("iam.env", "--name", "stg")
    assert_user_error(first, "WAS applied", "NOT written", "gate keeps waiting", "ParameterMaxVersionLimitExceeded")
    command = (f"aws ssm unlabel-parameter-version --name {RECORD} --parameter-version 1 --labels first-release "
               f"--region eu-west-1 --endpoint-url {moto_reset}")
    assert command in first.all
    assert "run `inv iam.env --name stg` again: it plans again, finds no change, applies the empty plan" in first.all
    assert first.all.count("inv iam.env --name stg") == 1, first.all
    # the apply did happen: the state is there; the record is not this commit's
    assert s3.get_object(Bucket="acme-api-tfstate-123456789012", Key=STG_KEY)["ContentLength"] > 0
    assert json.loads(ssm.get_parameter(Name=RECORD)["Parameter"]["Value"])["commit"] == "0" * 40

    argv = shlex.split(command)
    ssm.unlabel_parameter_version(Name=argv[argv.index("--name") + 1], ParameterVersion=1,
                                  Labels=[argv[argv.index("--labels") + 1]])
    again = project.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert "the plan has no changes" in again.out
    assert json.loads(ssm.get_parameter(Name=RECORD)["Parameter"]["Value"])["commit"] == git(project.path,
                                                                                           "rev-parse", "HEAD")
