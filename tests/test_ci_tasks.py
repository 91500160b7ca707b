"""`inv ci.*` run as a user runs them, against the CircleCI stand-in, moto and a clone of the project: one story per
behaviour that only the command line proves (flags, exit codes, what is printed, the records in AWS, the token kept
out of every output). The decisions themselves are tested in tests/unit, the client in test_circleci_client.py."""

from __future__ import annotations

import json

import pytest

from tests import ci_fixtures
from tests.ci_fixtures import SENTINEL, SLUG, WORKFLOW, gated_jobs, held_jobs
from tests.circleci_standin import job
from tests.project import Project, base_config, git

ci = ci_fixtures.ci
RERUN = "/api/v2/workflow/*/rerun"
APPROVE = "/api/v2/workflow/*/approve/*"


@pytest.fixture
def project(tmp_path, moto_reset, aws_env, ci) -> Project:
    return Project.create(tmp_path, {**aws_env, **ci.env(), "RUNBOOK_HTTP_TIMEOUT_S": "2"}, base_config(moto_reset))


def head(project) -> str:
    return git(project.path, "rev-parse", "HEAD")


def pipeline_for(ci, project, status="failed", jobs=None):
    """A pipeline of the staging branch for the clone's HEAD, after two older ones (so paging is used)."""
    ci.add_pipeline(SLUG, "staging", "1" * 40, workflows=[(WORKFLOW, "success")])
    ci.add_pipeline(SLUG, "staging", "2" * 40, workflows=[(WORKFLOW, "success")])
    spec = (WORKFLOW, status, jobs) if jobs is not None else (WORKFLOW, status)
    return ci.add_pipeline(SLUG, "staging", head(project), workflows=[spec])


def applied(project, moto):
    project.write_record("account", endpoint=moto)
    project.write_record("environment", endpoint=moto)


def assert_clean_failure(result, *needles, code=1):
    assert result.code == code, result.all
    assert "Traceback" not in result.all and SENTINEL not in result.all, result.all
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"


# -- status ------------------------------------------------------------------------------------------------------


def test_status_of_the_checked_out_environment_shows_the_pipeline_jobs_and_url(project, ci):
    pipeline = pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    result = project.inv("ci.status")
    assert result.code == 0, result.all
    assert f"pipeline #{pipeline.number}  staging @ {head(project)[:12]}" in result.out
    assert f"workflow {WORKFLOW}: on_hold" in result.out
    for name, status in (("test", "success"), ("hold", "on_hold"), ("deploy-stg", "blocked")):
        assert any(name in line and status in line for line in result.out.splitlines()), (name, result.out)
    assert "waiting for approval: hold: inv ci.approve --env stg --job hold" in result.out
    assert f"/pipelines/{SLUG}/{pipeline.number}/workflows/{pipeline.workflows[0].id}" in result.out
    assert SENTINEL not in result.all
    document = json.loads(project.inv("ci.status", "--json").out)
    assert document["format"] == 1 and document["workflow"]["status"] == "on_hold"
    assert document["pipeline"] == {"number": pipeline.number, "revision": head(project)}
    assert [(j["name"], j["status"]) for j in document["jobs"]][:2] == [("test", "success"), ("hold", "on_hold")]
    assert document["waiting_for_approval"] == ["hold"] and document["url"].endswith(pipeline.workflows[0].id)


# -- rerun -------------------------------------------------------------------------------------------------------


def test_rerun_from_failed_reads_the_records_and_makes_five_requests(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.reset_log()
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert ci.count("POST", RERUN) == 1
    assert ci.request_count <= 5, [r.path for r in ci.requests]  # pipelines, workflows, jobs (2 pages), POST
    rerun = ci.latest_workflow(pipeline, WORKFLOW)
    assert rerun.id != pipeline.workflows[0].id and rerun.id in result.out
    statuses = {j.name: j.status for j in rerun.jobs}  # only the failed deploy runs again
    assert statuses["test"] == "success" and statuses["deploy-stg"] != "failed"
    assert SENTINEL not in result.all


def test_rerun_of_a_workflow_that_succeeded_is_nothing_to_do(project, ci):
    pipeline_for(ci, project, status="success")
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert "succeeded: there is nothing to rerun" in result.out and ci.count("POST") == 0


def test_rerun_of_a_workflow_on_hold_names_the_approval_and_exits_5(project, ci):
    pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    result = project.inv("ci.rerun", "--env", "stg", "--wait")
    assert_clean_failure(result, "Not rerunning", "approval job hold", "inv ci.approve --env stg --job hold",
                         "nothing was changed", "TROUBLESHOOTING.md#on-hold", code=5)
    assert ci.count("POST") == 0


def test_rerun_refuses_a_failure_outside_the_gate_and_the_deploy_unless_forced(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=[job("test", "failed"), job("iam-gate-stg", "blocked", requires=["test"]),
                                    job("deploy-stg", "blocked", requires=["iam-gate-stg"])])
    applied(project, moto_reset)
    refused = project.inv("ci.rerun", "--env", "stg")  # `inv release` refuses this one too
    assert_clean_failure(refused, "failed in test, which is not the IAM gate or the deploy", "nothing was changed",
                         "inv ci.diagnose --env stg", "--force")
    assert ci.count("POST", RERUN) == 0
    forced = project.inv("ci.rerun", "--env", "stg", "--force")
    assert forced.code == 0, forced.all
    assert "--force" in forced.out and ci.count("POST", RERUN) == 1


def test_rerun_refuses_while_iam_is_pending_and_names_the_commands(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=gated_jobs())
    project.write_record("account", endpoint=moto_reset)  # the environment step is still missing
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "environment stg: never applied", "inv iam.env --name stg", "inv ci.rerun --env stg",
                         "TROUBLESHOOTING.md#iam-pending")
    assert "inv iam.account" not in result.err and ci.count("POST", RERUN) == 0


def test_rerun_wait_on_a_running_workflow_waits_then_reruns_it_when_it_fails(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, status="running", jobs=[
        job("test"), job("iam-gate-stg", requires=["test"]),
        job("deploy-stg", "running", outcome="failed", requires=["iam-gate-stg"])])
    applied(project, moto_reset)
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait")
    assert result.code == 0, result.all
    assert "waiting for it to stop" in result.out and "The rerun succeeded" in result.out
    assert "jobs 3/3 done" in result.out and ci.count("POST", RERUN) == 1
    assert pipeline.workflows[0].status == "failed" and ci.latest_workflow(pipeline, WORKFLOW).status == "success"


def test_rerun_refuses_a_poll_below_the_floor_naming_it(project, ci):
    result = project.inv("ci.rerun", "--env", "stg", "--wait", "--poll-s", "0.5")
    assert_clean_failure(result, "--poll-s takes a number of seconds from 2 to 86400, not '0.5'")
    assert ci.request_count == 0


def test_rerun_answered_502_after_circleci_made_it_is_not_posted_again(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.fault(RERUN, 502, method="POST", processed=True)
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert ci.count("POST", RERUN) == 1 and len([w for w in pipeline.workflows if w.name == WORKFLOW]) == 2
    assert "looking for the new workflow in" in result.out and "not POSTing again" in result.out
    assert ci.latest_workflow(pipeline, WORKFLOW).id in result.out


def test_rerun_from_start_reruns_every_job_of_a_canceled_workflow(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, status="canceled")
    applied(project, moto_reset)
    refused = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(refused, "was canceled", "only for a failed workflow", "--from-start")
    result = project.inv("ci.rerun", "--env", "stg", "--from-start")
    assert result.code == 0, result.all
    assert "from the start" in result.out
    assert [r.body for r in ci.requests if r.method == "POST"] == [{}]
    assert {j.status for j in ci.latest_workflow(pipeline, WORKFLOW).jobs} <= {"running", "blocked"}


def test_no_pipeline_for_head_names_both_commits_and_latest_acts_on_the_newest(project, ci, moto_reset):
    ci.add_pipeline(SLUG, "staging", "a" * 40, workflows=[(WORKFLOW, "failed", gated_jobs())])
    applied(project, moto_reset)
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, head(project)[:12], "a" * 12, "--latest")
    assert ci.count("POST", RERUN) == 0
    latest = project.inv("ci.rerun", "--env", "stg", "--latest")
    assert latest.code == 0, latest.all
    assert "--latest: pipeline #1 is for aaaaaaaaaaaa, not your HEAD" in latest.out
    assert ci.count("POST", RERUN) == 1


def test_a_rejected_token_is_named_and_never_printed(project, ci):
    pipeline_for(ci, project)
    result = project.inv("ci.status", env={**project.env, "CIRCLECI_TOKEN": "wrong-token-value"})
    assert_clean_failure(result, "CIRCLECI_TOKEN", "Personal API Token", "TROUBLESHOOTING.md#circleci-token-rejected")
    assert "wrong-token-value" not in result.all


# -- approve -----------------------------------------------------------------------------------------------------


def test_approve_the_job_on_hold_then_again_is_already_approved(project, ci):
    pipeline = pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    result = project.inv("ci.approve", "--env", "stg")
    assert result.code == 0, result.all
    assert "Approved hold" in result.out and ci.count("POST", APPROVE) == 1
    assert pipeline.workflows[0].job("hold").status == "success" and pipeline.workflows[0].status == "running"
    again = project.inv("ci.approve", "--env", "stg", "--job", "hold")
    assert again.code == 0, again.all
    assert "already approved" in again.out and ci.count("POST") == 1


def test_approve_a_protected_environment_asks_first(tmp_path, moto_reset, aws_env, ci):
    project = Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(moto_reset), branch="prod")
    pipeline = ci.add_pipeline(SLUG, "prod", head(project), workflows=[(WORKFLOW, "on_hold", held_jobs())])
    refused = project.inv("ci.approve", "--env", "prod")
    assert_clean_failure(refused, "Confirmation needed", "Approve hold", "(protected)", "--yes")
    assert ci.count("POST") == 0
    approved = project.inv("ci.approve", "--env", "prod", "--yes")
    assert approved.code == 0, approved.all
    assert ci.count("POST", APPROVE) == 1 and pipeline.workflows[0].job("hold").status == "success"


def test_approve_only_the_workflow_of_this_commit(project, ci):
    ci.add_pipeline(SLUG, "staging", "a" * 40, workflows=[(WORKFLOW, "on_hold", held_jobs())])
    result = project.inv("ci.approve", "--env", "stg")
    assert_clean_failure(result, head(project)[:12], "a" * 12)
    latest = project.inv("ci.approve", "--env", "stg", "--latest")
    assert latest.code != 0 and ci.count("POST") == 0  # there is no --latest for approvals


# -- diagnose ----------------------------------------------------------------------------------------------------


def test_diagnose_names_an_iam_race_masks_keys_and_gives_the_remedy(project, ci):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    ci.set_steps(pipeline.workflows[0].id, "deploy-stg", [
        {"name": "Checkout", "status": "success", "exit_code": 0, "output": "ok"},
        {"name": "Deploy", "status": "failed", "exit_code": 1, "output": (
            "Deploying acme-api to stg\n"
            "An error occurred (AccessDeniedException) when calling the CreateFunction operation: User: "
            "arn:aws:iam::123456789012:user/acme-api-circleci-deployer is not authorized to perform: "
            "iam:PassRole on resource: acme-api-stg-lambda-api (key AKIAABCDEFGHIJKLMNOP "
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY \x1b[31m)\n")},
    ])
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "deploy-stg step 'Deploy': iam-race" in result.out and "not authorized to perform" in result.out
    assert "AKIAABCDEFGHIJKLMNOP" not in result.out and "wJalrXUtnFEMI" not in result.out
    assert "\x1b[" not in result.out and SENTINEL not in result.all
    assert "An IAM race" in result.out and "never applied" in result.out
    assert "Remedy: as an administrator on staging: " in result.out and "inv iam.env --name stg" in result.out
    assert "inv ci.rerun --env stg" in result.out and "inv release --env stg" in result.out


def test_diagnose_tells_other_failures_apart(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=[job("test", "failed")])
    ci.set_steps(pipeline.workflows[0].id, "test", [
        {"name": "Tests", "status": "failed", "exit_code": 1, "output": "FAILED tests/test_app.py - AssertionError"},
    ])
    applied(project, moto_reset)
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "test step 'Tests': other" in result.out
    assert "Not an IAM race" in result.out and "TROUBLESHOOTING.md#workflow-failed" in result.out
    assert "Remedy: fix it and push a new commit" in result.out


def test_diagnose_without_step_output_classifies_by_job(tmp_path, moto_reset, aws_env, ci):
    config = base_config(moto_reset)
    slug = "circleci/5f1b3c1e-0000-4000-8000-000000000001/9a8b7c6d-0000-4000-8000-000000000002"
    config["circleci"]["project_slug"] = slug
    project = Project.create(tmp_path, {**aws_env, **ci.env()}, config)
    ci.add_pipeline(slug, "staging", head(project), workflows=[(WORKFLOW, "failed", [
        job("test"), job("iam-gate-stg", "failed", requires=["test"]),
        job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "iam-gate-stg: iam-race" in result.out and "step output not available" in result.out
    assert "inv ci.rerun --env stg" in result.out
    assert not [r for r in ci.requests if r.path.startswith("/api/v1.1/")]


# -- the pipeline's own jobs -------------------------------------------------------------------------------------


def test_gate_caps_the_seconds_flags(project):
    result = project.inv("ci.gate", "--env", "stg", "--settle-s", "1e12")
    assert_clean_failure(result, "--settle-s takes a number of seconds from", "to 86400")
