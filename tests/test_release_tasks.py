"""`inv release` refusals and dry run, and Ctrl-C during `inv iam.env`, run as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.circleci_standin import CircleCIStandIn, job
from tests.project import Project, base_config, git

SLUG = "gh/acme/acme-api"
WORKFLOW = "build-test-deploy"


@pytest.fixture
def ci():
    with CircleCIStandIn() as standin:
        yield standin


@pytest.fixture
def project(tmp_path, moto_reset, aws_env, ci) -> Project:
    return Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(moto_reset))


def head(project) -> str:
    return git(project.path, "rev-parse", "HEAD")


def test_release_dry_run_shows_each_step_and_why(project, ci, moto_reset):
    project.write_record("account", endpoint=moto_reset)
    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "failed", [
        job("test"), job("iam-gate-stg", "failed", requires=["test"]),
        job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
    result = project.inv("release", "--env", "stg", "--dry-run")
    assert result.code == 0, result.all
    assert "Traceback" not in result.all
    out = result.out
    assert "skip Terraform: plan (account nonprod (123456789012)): record current" in out
    assert "run  Terraform: plan (environment stg): never applied: show what would change" in out
    assert "rerun from failed" in out
    assert ci.count("POST") == 0
    assert "To run it for real: inv release --env stg" in out


def test_release_dry_run_lists_unreadable_records_as_a_finding(project, ci):
    env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = project.inv("release", "--env", "stg", "--dry-run", env=env)
    assert result.code == 0, result.all
    assert "would stop a real run" in result.out
    assert "Cannot read the applied record of account nonprod" in result.out
    assert "No AWS credentials" in result.out


def test_release_does_not_rerun_a_test_failure(project, ci, moto_reset):
    project.write_record("account", endpoint=moto_reset)
    project.write_record("environment", endpoint=moto_reset)
    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "failed", [
        job("test", "failed"), job("iam-gate-stg", "blocked", requires=["test"]),
        job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
    result = project.inv("release", "--env", "stg", "--yes")
    assert result.code != 0
    assert "Traceback" not in result.all
    assert "failed in test, which is not the IAM gate or the deploy" in result.all
    assert "inv ci.diagnose --env stg" in result.all
    assert ci.count("POST") == 0
    assert "Summary" in result.out


def test_release_stops_watching_at_an_approval(project, ci, moto_reset):
    project.write_record("account", endpoint=moto_reset)
    project.write_record("environment", endpoint=moto_reset)
    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "on_hold")])
    result = project.inv("release", "--env", "stg", "--yes", "--poll-s", "2")
    assert result.code != 0
    assert "approval job" in result.all and "approve it in the CircleCI app" in result.all
    assert ci.count("POST") == 0


def test_release_without_circleci_token_stops_before_anything_changes(project, ci, moto_reset, aws_credentials):
    import boto3

    env = {k: v for k, v in project.env.items() if k != "CIRCLECI_TOKEN"}
    result = project.inv("release", "--env", "stg", "--yes", env=env)
    assert result.code != 0
    assert "CIRCLECI_TOKEN" in result.all and "Traceback" not in result.all
    s3 = boto3.client("s3", endpoint_url=moto_reset, region_name="eu-west-1")
    assert s3.list_buckets()["Buckets"] == []


def test_release_with_a_rejected_token_stops_before_anything_changes(project, ci, moto_reset, aws_credentials):
    import boto3

    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "failed")])
    result = project.inv("release", "--env", "stg", "--yes", env={**project.env, "CIRCLECI_TOKEN": "not-the-token"})
    assert result.code != 0
    assert "CIRCLECI_TOKEN" in result.all and "Traceback" not in result.all
    assert "no pipeline for" not in result.out, "a rejected token is not worth waiting out"
    s3 = boto3.client("s3", endpoint_url=moto_reset, region_name="eu-west-1")
    assert s3.list_buckets()["Buckets"] == []
    ssm = boto3.client("ssm", endpoint_url=moto_reset, region_name="eu-west-1")
    assert ssm.describe_parameters()["Parameters"] == []


@pytest.mark.terraform
def test_ctrl_c_during_plan_stops_terraform_and_applies_nothing(project, moto_reset, aws_credentials, tmp_path):
    import boto3

    # Terraform itself, made slow at `plan` so the interrupt lands while it runs.
    shim = tmp_path / "shim"
    shim.mkdir()
    marker = tmp_path / "planning"
    real = Path(sys.executable).parent / "terraform"
    (shim / "terraform").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = plan ]; then touch {marker}; sleep 20 & wait $!; fi\n'
        f'exec {real} "$@"\n'
    )
    (shim / "terraform").chmod(0o755)
    env = {**project.env, "PATH": f"{shim}{os.pathsep}{project.env['PATH']}"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "inv"), "iam.env", "--name", "stg"],
                            cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "plan never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C (Terraform runs in its own group)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "Interrupted during the plan of environment stg" in err
    assert "Nothing was applied" in err
    ssm = boto3.client("ssm", endpoint_url=moto_reset, region_name="eu-west-1")
    assert ssm.describe_parameters()["Parameters"] == []
    ddb = boto3.client("dynamodb", endpoint_url=moto_reset, region_name="eu-west-1")
    locks = [i["LockID"]["S"] for i in ddb.scan(TableName="acme-api-tf-locks")["Items"]]
    assert not [lock for lock in locks if not lock.endswith("-md5")], "a state lock was left held"
