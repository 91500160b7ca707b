"""End to end, one test per story: moto, real Terraform on fixture roots, the CircleCI stand-in
with its jobs executed by the real commands (`inv ci.gate`, `inv ci.deploy`), and the
administrator running `inv release` as a user does."""

from __future__ import annotations

import json

import pytest

from tests.circleci_standin import job
from tests.pipeline_runner import PipelineRunner
from tests.project import Project, base_config, git

SLUG = "gh/acme/acme-api"
WORKFLOW = "build-test-deploy"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
RELEASE = ("release", "--env", "stg", "--yes", "--poll-s", "2")


@pytest.fixture
def project(project, ci, aws) -> Project:
    """The clone (tests/conftest.py), whose stg deploy touches a marker, and the roles the real root would make."""
    marker = project.path.parent / "deployed-stg"
    config = base_config(aws("s3").meta.endpoint_url)
    config["environments"]["stg"]["deploy_command"] = f"touch {marker}"
    project.commit_config(config)
    project.marker = marker
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



@pytest.mark.terraform
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


@pytest.mark.terraform
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


@pytest.mark.terraform
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


@pytest.mark.terraform
@pytest.mark.terraform_matrix  # backend init arguments and S3 lock files differ by version
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


@pytest.mark.terraform
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


def head(project) -> str:
    return git(project.path, "rev-parse", "HEAD")


def failed_workflow(ci, project, failed: str = "iam-gate-stg"):
    jobs = [job("test", "failed" if failed == "test" else "success"),
            job("iam-gate-stg", "failed" if failed == "iam-gate-stg" else "blocked", requires=["test"]),
            job("deploy-stg", "blocked", requires=["iam-gate-stg"])]
    return ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "failed", jobs)])


def test_a_dry_run_shows_each_step_and_changes_nothing(project, ci):
    failed_workflow(ci, project)
    # no CircleCI token: a dry run calls no CircleCI, so it needs none
    result = project.inv("release", "--env", "stg", "--dry-run",
                         env={k: v for k, v in project.env.items() if "TOKEN" not in k})
    assert result.code == 0, result.all
    out = result.out
    assert "run  Terraform: plan (account nonprod (123456789012)): decided by the applied record at run time" in out
    assert "run  Terraform: plan (environment stg): decided by the applied record at run time" in out
    assert "rerun from failed" in out and "To run it for real: inv release --env stg" in out
    assert ci.count("POST") == 0 and ci.count("GET") == 0


def test_a_failure_outside_the_iam_gate_is_not_rerun(project, ci, aws):
    endpoint = aws("s3").meta.endpoint_url
    project.write_record("account", endpoint=endpoint)
    project.write_record("environment", endpoint=endpoint)
    failed_workflow(ci, project, failed="test")
    result = project.inv("release", "--env", "stg", "--yes")
    assert result.code == 1 and "Traceback" not in result.all
    assert "failed in test, which is not the IAM gate or the deploy" in result.all
    assert "inv ci.diagnose --env stg" in result.all and "Summary" in result.out
    assert ci.count("POST") == 0


def test_a_watch_stops_at_an_approval_with_exit_5(project, ci, aws):
    endpoint = aws("s3").meta.endpoint_url
    project.write_record("account", endpoint=endpoint)
    project.write_record("environment", endpoint=endpoint)
    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "on_hold")])
    result = project.inv("release", "--env", "stg", "--yes", "--poll-s", "2")
    assert result.code == 5, result.all
    assert "approval job" in result.all and "approve it in the CircleCI app" in result.all
    assert ci.count("POST") == 0


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_missing_or_rejected_token_stops_before_anything_changes(project, ci, aws, token):
    failed_workflow(ci, project)
    env = {k: v for k, v in project.env.items() if k != "CIRCLECI_TOKEN"}
    env.update({"CIRCLECI_TOKEN": token} if token else {})
    result = project.inv("release", "--env", "stg", "--yes", env=env)
    assert result.code == 1 and "Traceback" not in result.all
    assert "CIRCLECI_TOKEN" in result.all and "no pipeline for" not in result.out
    assert aws("s3").list_buckets()["Buckets"] == [] and aws("ssm").describe_parameters()["Parameters"] == []


@pytest.mark.terraform
def test_release_refuses_to_revert_another_branchs_account_iam(project, ci, aws):
    git(project.path, "checkout", "-q", "-b", "develop")
    git(project.path, "push", "-q", "-u", "origin", "develop")
    path = project.path / "roots" / "account" / "main.tf"
    path.write_text(path.read_text() + "\n# develop's own change\n")
    git(project.path, "commit", "-q", "-am", "develop's change")
    git(project.path, "push", "-q")
    assert project.inv("iam.account").code == 0
    git(project.path, "checkout", "-q", "staging")
    theirs = record(aws, "/acme-api/iam/account")
    ci.add_pipeline(SLUG, "staging", head(project), workflows=[(WORKFLOW, "success", [job("test")])])
    refused = project.inv("release", "--env", "stg", "--yes")
    assert refused.code == 1, refused.all
    for needle in ("last applied from branch 'develop'", "--yes does not answer", "inv release --env stg --yes"):
        assert needle in refused.all
    assert "Terraform: plan" not in refused.out and record(aws, "/acme-api/iam/account") == theirs
    taken = project.inv("release", "--env", "stg", "--yes", "--take-over")
    assert taken.code == 0, taken.all
    assert record(aws, "/acme-api/iam/account")["branch"] == "staging"
