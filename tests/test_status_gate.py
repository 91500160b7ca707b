"""`inv iam.status` and the pipeline's `inv ci.gate`, run as users run them, against moto."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.project import Project, base_config, git

TRUST_LAMBDA = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
})
ROLES = ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]


@pytest.fixture
def iam(moto_reset, aws_credentials):
    import boto3

    return boto3.client("iam", endpoint_url=moto_reset, region_name="eu-west-1")


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


def create_roles(iam, trust=TRUST_LAMBDA):
    """What the real environment root module creates; the fixture root has no provider to do it."""
    for name in ROLES:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)


def gate(project, *extra: str, timeout_s="3"):
    return project.inv("ci.gate", "--env", "stg", "--timeout-s", timeout_s, "--poll-s", "0.5", "--settle-s", "0",
                       *extra)


def change_environment_root(project):
    path = project.path / "roots" / "environment" / "main.tf"
    path.write_text(path.read_text() + "\n# a change to the environment's IAM\n")
    git(project.path, "commit", "-q", "-am", "change stg IAM")
    git(project.path, "push", "-q")


# -- iam.status --------------------------------------------------------------------------------


@pytest.mark.terraform
def test_status_shows_never_applied_then_current_then_pending(project):
    before = project.inv("iam.status")
    assert before.code == 0, before.all
    assert "never applied" in before.out
    assert "inv iam.env --name stg" in before.out

    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    after = project.inv("iam.status")
    stg_line = next(line for line in after.out.splitlines() if line.startswith("environment stg"))
    assert "current" in stg_line and "moto" in stg_line
    assert git(project.path, "rev-parse", "HEAD")[:12] in stg_line

    change_environment_root(project)
    changed = project.inv("iam.status", "--check")
    assert changed.code == 3, changed.all
    stg_line = next(line for line in changed.out.splitlines() if line.startswith("environment stg"))
    assert "change pending" in stg_line
    account_line = next(line for line in changed.out.splitlines() if line.startswith("account nonprod"))
    assert "current" in account_line
    assert "Traceback" not in changed.all


def test_status_without_access_says_unknown_and_why(project):
    env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = project.inv("iam.status", "--check", env=env)
    assert result.code == 1, result.all  # no record could be read at all: a failure, not a state (record-unreadable)
    assert "unknown: No AWS credentials" in result.out
    assert "ERROR [record-unreadable]" in result.err
    assert "Traceback" not in result.all


# -- ci.gate -----------------------------------------------------------------------------------


def test_gate_times_out_with_the_commands_and_the_rerun(project):
    started = time.monotonic()
    result = gate(project, timeout_s="2")
    assert result.code != 0
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.all
    for needle in ("inv iam.account --env stg", "inv iam.env --name stg", "never applied",
                   "inv ci.rerun --env stg", "timed out"):
        assert needle in result.all, needle
    assert result.out.count("Waiting: the IAM for this commit is not applied yet") == 1, "instructions once"


@pytest.mark.terraform
def test_gate_passes_at_once_when_everything_is_applied(project, iam):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    create_roles(iam)
    result = gate(project)
    assert result.code == 0, result.all
    assert "IAM gate open for stg" in result.out
    assert "Waiting" not in result.all


@pytest.mark.terraform
def test_gate_waits_for_a_role_that_does_not_trust_lambda(project, iam):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    create_roles(iam, trust=TRUST_LAMBDA.replace("lambda.amazonaws.com", "ec2.amazonaws.com"))
    result = gate(project, timeout_s="1.5")
    assert result.code != 0
    assert "does not trust lambda.amazonaws.com" in result.all


@pytest.mark.terraform
def test_gate_opens_after_the_administrator_applies(project, iam):
    assert project.inv("iam.account").code == 0
    create_roles(iam)
    outcome = {}

    def administrator():
        time.sleep(1.0)
        outcome["apply"] = project.inv("iam.env", "--name", "stg")

    admin = threading.Thread(target=administrator)
    admin.start()
    result = gate(project, timeout_s="60")
    admin.join()
    assert outcome["apply"].code == 0, outcome["apply"].all
    assert result.code == 0, result.all
    assert result.out.count("Waiting: the IAM for this commit is not applied yet") == 1
    assert "environment stg: never applied; run: inv iam.env --name stg" in result.all


@pytest.mark.terraform
def test_gate_keeps_waiting_for_a_changed_root(project, iam):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    create_roles(iam)
    change_environment_root(project)
    result = gate(project, timeout_s="1.5")
    assert result.code != 0
    assert "environment stg: change pending; run: inv iam.env --name stg" in result.all


@pytest.mark.parametrize(("flag", "value"), [("--timeout-s", "abc"), ("--poll-s", "0"), ("--settle-s", "-1")])
def test_gate_refuses_bad_seconds_without_a_traceback(project, flag, value):
    result = project.inv("ci.gate", "--env", "stg", flag, value)
    assert result.code != 0
    assert "Traceback" not in result.all
    assert f"{flag} takes a number of seconds" in result.err


def test_deploy_without_deploy_command_fails_and_says_so(project):
    result = project.inv("ci.deploy", "--env", "stg")
    assert result.code != 0
    assert "No deploy_command is configured for environment stg" in result.all
    assert "environments.stg.deploy_command" in result.all


def test_deploy_runs_the_configured_command(project, tmp_path):
    config = base_config(None)
    marker = tmp_path / "deployed"
    config["environments"]["stg"]["deploy_command"] = f"touch {marker}"
    project.commit_config(config)
    result = project.inv("ci.deploy", "--env", "stg")
    assert result.code == 0, result.all
    assert marker.exists()
