"""End to end, one test per story: moto, real Terraform on fixture roots, the CircleCI stand-in
with its jobs executed by the real commands (`inv ci.gate`, `inv ci.deploy`), and the
administrator running `inv release` as a user does."""

from __future__ import annotations

import json

import pytest

from tests.circleci_standin import CircleCIStandIn, job
from tests.pipeline_runner import PipelineRunner
from tests.project import Project, base_config, git

pytestmark = pytest.mark.terraform

SLUG = "gh/acme/acme-api"
WORKFLOW = "build-test-deploy"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
RELEASE = ("release", "--env", "stg", "--yes", "--poll-s", "2")


@pytest.fixture
def ci():
    with CircleCIStandIn() as standin:
        yield standin


@pytest.fixture
def aws(moto_reset, aws_credentials):
    import boto3

    def client(service):
        return boto3.client(service, endpoint_url=moto_reset, region_name="eu-west-1")

    return client


@pytest.fixture
def project(tmp_path, moto_reset, aws_env, ci, aws) -> Project:
    config = base_config(moto_reset)
    marker = tmp_path / "deployed-stg"
    config["environments"]["stg"]["deploy_command"] = f"touch {marker}"
    project = Project.create(tmp_path, {**aws_env, **ci.env()}, config)
    project.marker = marker
    # what the real environment root module creates; the fixture root has no provider for it
    for role in ("acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"):
        aws("iam").create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
    return project


def merge_iam_change(project):
    path = project.path / "roots" / "environment" / "main.tf"
    path.write_text(path.read_text() + "\n# the lambdas need one more permission\n")
    git(project.path, "commit", "-q", "-am", "IAM change for stg")
    git(project.path, "push", "-q")


def start_pipeline(ci, project):
    """The pipeline CircleCI starts on the merge: test -> iam-gate-stg -> deploy-stg."""
    return ci.add_pipeline(SLUG, "staging", git(project.path, "rev-parse", "HEAD"), workflows=[(WORKFLOW, "running", [
        job("test", "running"),
        job("iam-gate-stg", "blocked", requires=["test"]),
        job("deploy-stg", "blocked", requires=["iam-gate-stg"]),
    ])])


def statuses(pipeline):
    return [w.status for w in pipeline.workflows]


def record(aws, name):
    try:
        return json.loads(aws("ssm").get_parameter(Name=name)["Parameter"]["Value"])
    except aws("ssm").exceptions.ParameterNotFound:
        return None



def test_a_iam_change_administrator_on_time(project, ci, aws):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    merge_iam_change(project)
    pipeline = start_pipeline(ci, project)
    with PipelineRunner(ci, project, ("--timeout-s", "120", "--poll-s", "0.2", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: pipeline.workflows[0].job("iam-gate-stg").status == "running", what="the gate")
        released = project.inv(*RELEASE)
        runner.wait_for(lambda: pipeline.workflows[-1].status == "success", what="the deploy")
    assert released.code == 0, released.all
    assert "skipped" in released.out and "record current" in released.out  # the account step was not needed
    assert "the IAM gate opens by itself" in released.out
    assert project.marker.exists()
    assert statuses(pipeline) == ["success"], "no workflow failed, nothing was rerun"
    assert ci.count("POST", "/api/v2/workflow/*/rerun") == 0
    assert "environment stg: change pending" in runner.output("iam-gate-stg")


def test_b_administrator_too_late(project, ci, aws):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    merge_iam_change(project)
    pipeline = start_pipeline(ci, project)
    with PipelineRunner(ci, project, ("--timeout-s", "1", "--poll-s", "0.2", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: pipeline.workflows[0].status == "failed", what="the gate to time out")
        assert "inv ci.rerun --env stg" in runner.output("iam-gate-stg")
        assert not project.marker.exists(), "the deploy must not run before the IAM"
        released = project.inv(*RELEASE)
        runner.wait_for(lambda: pipeline.workflows[-1].status == "success", what="the rerun")
    assert released.code == 0, released.all
    assert "rerunning from failed" in released.out
    assert ci.count("POST", "/api/v2/workflow/*/rerun") == 1
    assert statuses(pipeline) == ["failed", "success"]
    assert project.marker.exists()


def test_c_no_iam_change_needs_no_administrator(project, ci, aws):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    git(project.path, "commit", "-q", "--allow-empty", "-m", "application change only")
    git(project.path, "push", "-q")
    pipeline = start_pipeline(ci, project)
    with PipelineRunner(ci, project, ("--timeout-s", "30", "--poll-s", "0.2", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: pipeline.workflows[-1].status == "success", what="the deploy")
    assert "IAM gate open for stg" in runner.output("iam-gate-stg")
    assert "Waiting" not in runner.output("iam-gate-stg")
    assert project.marker.exists()
    table = project.inv("iam.status").out.splitlines()
    assert "current" in next(line for line in table if line.startswith("environment stg"))
    assert "current" in next(line for line in table if line.startswith("account nonprod"))


def test_d_first_deploy_into_a_new_environment(project, ci, aws):
    pipeline = start_pipeline(ci, project)
    with PipelineRunner(ci, project, ("--timeout-s", "120", "--poll-s", "0.2", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: "Waiting" in runner.output("iam-gate-stg") or
                        pipeline.workflows[0].job("iam-gate-stg").status == "running", what="the gate")
        released = project.inv(*RELEASE)
        runner.wait_for(lambda: pipeline.workflows[-1].status == "success", what="the deploy")
    assert released.code == 0, released.all
    assert "created S3 bucket" in released.out
    assert record(aws, "/acme-api/iam/account") is not None
    assert record(aws, "/acme-api/iam/env/stg") is not None
    gate = runner.output("iam-gate-stg")
    assert "account nonprod (123456789012): never applied" in gate and "environment stg: never applied" in gate
    assert statuses(pipeline) == ["success"]


def test_e_apply_fails_no_record_gate_keeps_waiting(project, ci, aws, moto_reset):
    assert project.inv("iam.account").code == 0
    assert project.inv("iam.env", "--name", "stg").code == 0
    before = record(aws, "/acme-api/iam/env/stg")
    config = base_config(moto_reset)
    config["terraform"]["roots"]["environment"] = "roots/failing-apply"
    project.commit_config(config)
    pipeline = start_pipeline(ci, project)
    with PipelineRunner(ci, project, ("--timeout-s", "6", "--poll-s", "0.2", "--settle-s", "0")) as runner:
        runner.wait_for(lambda: pipeline.workflows[0].job("iam-gate-stg").status == "running", what="the gate")
        released = project.inv(*RELEASE)
        assert pipeline.workflows[0].job("iam-gate-stg").status == "running", "the gate is still waiting"
        runner.wait_for(lambda: pipeline.workflows[0].status == "failed", what="the gate to time out")
    assert released.code != 0
    assert "Traceback" not in released.all
    assert "apply to environment stg failed" in released.all
    assert "inv release --env stg" in released.err
    assert record(aws, "/acme-api/iam/env/stg") == before, "no record on a failed apply"
    assert not project.marker.exists()
    assert "environment stg: change pending" in runner.output("iam-gate-stg")
