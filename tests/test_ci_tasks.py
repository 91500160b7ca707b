"""`inv ci.status`, `inv ci.rerun` and `inv ci.diagnose` run as a user runs them, against the CircleCI stand-in."""

from __future__ import annotations

import pytest

from tests.circleci_standin import CircleCIStandIn, job
from tests.project import Project, base_config, git

SENTINEL = "SENTINEL-TOKEN-do-not-print-8f3a"
SLUG = "gh/acme/acme-api"
WORKFLOW = "build-test-deploy"
RERUN = "/api/v2/workflow/*/rerun"


@pytest.fixture
def ci():
    with CircleCIStandIn(token=SENTINEL, page_size=2) as standin:
        yield standin


@pytest.fixture
def project(tmp_path, moto_reset, aws_env, ci) -> Project:
    env = {**aws_env, **ci.env(), "RUNBOOK_HTTP_TIMEOUT_S": "2"}
    return Project.create(tmp_path, env, base_config(moto_reset))


def head(project) -> str:
    return git(project.path, "rev-parse", "HEAD")


def pipeline_for(ci, project, status="failed", jobs=None):
    """A pipeline of the staging branch for the clone's HEAD, after two older ones (so paging is used)."""
    ci.add_pipeline(SLUG, "staging", "1" * 40, workflows=[(WORKFLOW, "success")])
    ci.add_pipeline(SLUG, "staging", "2" * 40, workflows=[(WORKFLOW, "success")])
    spec = (WORKFLOW, status, jobs) if jobs is not None else (WORKFLOW, status)
    return ci.add_pipeline(SLUG, "staging", head(project), workflows=[spec])


def gated_jobs(deploy="failed"):
    return [job("test"), job("iam-gate-stg", requires=["test"]), job("deploy-stg", deploy, requires=["iam-gate-stg"])]


def applied(project, moto):
    project.write_record("account", endpoint=moto)
    project.write_record("environment", endpoint=moto)


def assert_clean_failure(result, *needles):
    assert result.code != 0, result.all
    assert "Traceback" not in result.all, result.all
    assert SENTINEL not in result.all
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"


# -- status ------------------------------------------------------------------------------------


def test_status_shows_pipeline_jobs_and_url(project, ci):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    ci.reset_log()
    result = project.inv("ci.status", "--env", "stg")
    assert result.code == 0, result.all
    assert f"pipeline #{pipeline.number}" in result.out
    assert head(project)[:12] in result.out
    assert f"workflow {WORKFLOW}: failed" in result.out
    for name, status in (("test", "success"), ("iam-gate-stg", "success"), ("deploy-stg", "failed")):
        assert any(name in line and status in line for line in result.out.splitlines()), (name, result.out)
    assert f"/pipelines/{SLUG}/{pipeline.number}/workflows/{pipeline.workflows[0].id}" in result.out
    assert SENTINEL not in result.all


def test_status_defaults_to_the_checked_out_environment(project, ci):
    pipeline_for(ci, project)
    result = project.inv("ci.status")
    assert result.code == 0, result.all


# -- rerun -------------------------------------------------------------------------------------


def test_rerun_from_failed_with_at_most_five_requests(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.reset_log()
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert ci.count("POST", RERUN) == 1
    assert ci.request_count <= 5, [r.path for r in ci.requests]  # pipelines, workflows, jobs (2 pages), POST
    rerun = ci.latest_workflow(pipeline, WORKFLOW)
    assert rerun.id != pipeline.workflows[0].id
    assert rerun.id in result.out
    # only the failed deploy runs again; the test and the gate keep their results
    assert {j.name: j.status for j in rerun.jobs}["test"] == "success"
    assert {j.name: j.status for j in rerun.jobs}["deploy-stg"] != "failed"
    assert SENTINEL not in result.all


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        ("success", "succeeded"),
        ("running", "still running"),
        ("failing", "failing"),
        ("on_hold", "approval job hold"),
        ("not_run", "did not run"),
        ("unauthorized", "restricted context"),
    ],
)
def test_rerun_refuses_when_a_rerun_would_be_wrong(project, ci, moto_reset, status, needle):
    pipeline_for(ci, project, status=status)
    applied(project, moto_reset)
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "Not rerunning", needle, "nothing was changed")
    assert ci.count("POST", RERUN) == 0


def test_rerun_refuses_while_iam_is_pending_and_names_the_commands(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=gated_jobs())
    project.write_record("account", endpoint=moto_reset)  # the environment step is still missing
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "environment stg: never applied", "inv iam.env --name stg",
                         "inv ci.rerun --env stg")
    assert "inv iam.account" not in result.err
    assert ci.count("POST", RERUN) == 0


def test_rerun_refuses_for_a_changed_root(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=gated_jobs())
    project.write_record("account", endpoint=moto_reset)
    project.write_record("environment", endpoint=moto_reset, fingerprint="0" * 64)
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "change pending", "inv iam.env --name stg")
    assert ci.count("POST", RERUN) == 0


def test_rerun_refuses_a_failure_outside_the_gate_and_the_deploy_unless_forced(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=[job("test", "failed"), job("iam-gate-stg", "blocked", requires=["test"]),
                                    job("deploy-stg", "blocked", requires=["iam-gate-stg"])])
    applied(project, moto_reset)
    refused = project.inv("ci.rerun", "--env", "stg")  # `inv release` refuses this one too
    assert_clean_failure(refused, "failed in test, which is not the IAM gate or the deploy", "Nothing was changed",
                         "inv ci.diagnose --env stg", "--force")
    assert ci.count("POST", RERUN) == 0
    forced = project.inv("ci.rerun", "--env", "stg", "--force")
    assert forced.code == 0, forced.all
    assert ci.count("POST", RERUN) == 1


def test_rerun_force_skips_the_records(project, ci):
    pipeline_for(ci, project, jobs=gated_jobs())
    result = project.inv("ci.rerun", "--env", "stg", "--force")
    assert result.code == 0, result.all
    assert "--force" in result.out
    assert ci.count("POST", RERUN) == 1


def test_rerun_wait_succeeds_when_the_new_workflow_succeeds(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait")
    assert result.code == 0, result.all
    assert "The rerun succeeded" in result.out
    assert "jobs 3/3 done" in result.out


def test_rerun_wait_fails_when_the_new_workflow_fails(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.rerun_outcomes["deploy-stg"] = "failed"
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait")
    assert_clean_failure(result, "The rerun ended failed", "inv ci.diagnose --env stg")
    assert ci.latest_workflow(pipeline, WORKFLOW).status == "failed"


def test_no_pipeline_for_head_names_both_commits(project, ci, moto_reset):
    ci.add_pipeline(SLUG, "staging", "a" * 40, workflows=[(WORKFLOW, "failed", gated_jobs())])
    applied(project, moto_reset)
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, head(project)[:12], "a" * 12, "--latest")
    assert ci.count("POST", RERUN) == 0
    latest = project.inv("ci.rerun", "--env", "stg", "--latest")
    assert latest.code == 0, latest.all
    assert "--latest" in latest.out
    assert ci.count("POST", RERUN) == 1


def test_branch_names_are_url_encoded(tmp_path, moto_reset, aws_env, ci):
    config = base_config(moto_reset)
    config["environments"]["stg"]["branch"] = "release/stg"
    env = {**aws_env, **ci.env()}
    project = Project.create(tmp_path, env, config, branch="release/stg")
    ci.add_pipeline(SLUG, "release/stg", head(project), workflows=[(WORKFLOW, "failed")])
    result = project.inv("ci.status")
    assert result.code == 0, result.all
    assert any("branch=release%2Fstg" in r.raw_uri for r in ci.requests)


# -- faults ------------------------------------------------------------------------------------


def test_invalid_token(project, ci):
    pipeline_for(ci, project)
    result = project.inv("ci.status", env={**project.env, "CIRCLECI_TOKEN": "wrong-token-value"})
    assert_clean_failure(result, "CIRCLECI_TOKEN", "Personal API Token")
    assert "wrong-token-value" not in result.all


def test_no_token(project, ci):
    env = {k: v for k, v in project.env.items() if k != "CIRCLECI_TOKEN"}
    result = project.inv("ci.rerun", "--env", "stg", env=env)
    assert_clean_failure(result, "CIRCLECI_TOKEN", "CIRCLE_TOKEN", "CIRCLECI_CLI_TOKEN")


def test_unknown_project(project, ci, tmp_path):
    config = base_config(None)
    config["circleci"]["project_slug"] = "gh/acme/nope"
    project.commit_config(config)
    result = project.inv("ci.status", "--env", "stg")
    assert_clean_failure(result, "gh/acme/nope", "circleci.project_slug")


def test_throttled_then_answered(project, ci):
    pipeline_for(ci, project)
    ci.fault("/api/v2/project/*/pipeline", 429, retry_after=1)
    result = project.inv("ci.status", "--env", "stg")
    assert result.code == 0, result.all


def test_server_errors_that_persist(project, ci):
    pipeline_for(ci, project)
    ci.fault("*", 500, count=None)
    result = project.inv("ci.status", "--env", "stg")
    assert_clean_failure(result, "500")


def test_malformed_json(project, ci):
    pipeline_for(ci, project)
    ci.fault("/api/v2/pipeline/*/workflow", malformed=True, count=None)
    result = project.inv("ci.status", "--env", "stg")
    assert_clean_failure(result, "/workflow")


def test_slow_api_times_out_with_the_host(project, ci):
    pipeline_for(ci, project)
    ci.fault("/api/v2/project/*/pipeline", delay=4, count=None)
    result = project.inv("ci.status", "--env", "stg", env={**project.env, "RUNBOOK_HTTP_TIMEOUT_S": "0.5"})
    assert_clean_failure(result, "127.0.0.1")


def test_connection_refused(project, ci):
    result = project.inv("ci.status", "--env", "stg", env={**project.env, "CIRCLECI_HOST": ci.refused_url()})
    assert_clean_failure(result, "CIRCLECI_HOST")


def test_rerun_refused_by_circleci_changes_nothing_locally(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.fault(RERUN, 400, method="POST", message="Workflow cannot be rerun: too old")
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "too old")


# -- diagnose ----------------------------------------------------------------------------------


def test_diagnose_names_an_iam_race(project, ci):
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
    assert "deploy-stg step 'Deploy': iam-race" in result.out
    assert "not authorized to perform" in result.out
    assert "AKIAABCDEFGHIJKLMNOP" not in result.out
    assert "wJalrXUtnFEMI" not in result.out and "\x1b[" not in result.out
    assert "inv iam.env --name stg" in result.out and "inv ci.rerun --env stg" in result.out
    assert SENTINEL not in result.all


def test_diagnose_tells_other_failures_apart(project, ci):
    pipeline = pipeline_for(ci, project, jobs=[job("test", "failed")])
    ci.set_steps(pipeline.workflows[0].id, "test", [
        {"name": "Tests", "status": "failed", "exit_code": 1, "output": "FAILED tests/test_app.py - AssertionError"},
    ])
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "test step 'Tests': other" in result.out
    assert "Not an IAM race" in result.out and "TROUBLESHOOTING.md" in result.out


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
    assert "step output not available" in result.out
    assert "iam-gate-stg: iam-race" in result.out
    assert "inv ci.rerun --env stg" in result.out


def test_diagnose_of_a_successful_workflow(project, ci):
    pipeline_for(ci, project, status="success")
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "nothing to diagnose" in result.out


# -- one rerun, never two ----------------------------------------------------------------------


def test_rerun_answered_502_after_circleci_made_it_is_not_posted_again(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.fault(RERUN, 502, method="POST", processed=True)
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert ci.count("POST", RERUN) == 1
    assert len([w for w in pipeline.workflows if w.name == WORKFLOW]) == 2  # the original and one rerun
    assert "looking for the new workflow in" in result.out and "not POSTing again" in result.out
    assert ci.latest_workflow(pipeline, WORKFLOW).id in result.out


def test_rerun_answered_503_before_circleci_acted_is_posted_once_more(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, jobs=gated_jobs())
    applied(project, moto_reset)
    ci.fault(RERUN, 503, method="POST")
    result = project.inv("ci.rerun", "--env", "stg")
    assert result.code == 0, result.all
    assert ci.count("POST", RERUN) == 2
    assert len([w for w in pipeline.workflows if w.name == WORKFLOW]) == 2


# -- rerun rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["error", "canceled"])
def test_rerun_refuses_error_and_canceled_naming_the_status(project, ci, moto_reset, status):
    pipeline_for(ci, project, status=status)
    applied(project, moto_reset)
    result = project.inv("ci.rerun", "--env", "stg")
    assert_clean_failure(result, "Not rerunning", status, "only for a failed workflow", "--from-start")
    assert ci.count("POST", RERUN) == 0


def test_rerun_from_start_reruns_every_job_when_asked(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, status="canceled")
    applied(project, moto_reset)
    result = project.inv("ci.rerun", "--env", "stg", "--from-start")
    assert result.code == 0, result.all
    assert "from the start" in result.out
    posts = [r for r in ci.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].body == {}
    assert {j.status for j in ci.latest_workflow(pipeline, WORKFLOW).jobs} <= {"running", "blocked"}


def test_rerun_wait_on_a_running_workflow_waits_then_reruns_it_when_it_fails(project, ci, moto_reset):
    pipeline = pipeline_for(ci, project, status="running", jobs=[job("test"), job("iam-gate-stg", requires=["test"]),
                                               job("deploy-stg", "running", outcome="failed",
                                                   requires=["iam-gate-stg"])])
    applied(project, moto_reset)
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait")
    assert result.code == 0, result.all
    assert "waiting for it to stop" in result.out and "The rerun succeeded" in result.out
    assert ci.count("POST", RERUN) == 1
    assert pipeline.workflows[0].status == "failed"
    assert ci.latest_workflow(pipeline, WORKFLOW).status == "success"


def test_rerun_wait_on_a_running_workflow_that_succeeds_reruns_nothing(project, ci, moto_reset):
    pipeline_for(ci, project, status="running")
    applied(project, moto_reset)
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait", "--poll-s", "0.05")
    assert result.code == 0, result.all
    assert "nothing to rerun" in result.out
    assert "below the floor of 2 s" in result.out
    assert ci.count("POST") == 0


def test_rerun_wait_stops_at_an_approval_and_names_the_job(project, ci, moto_reset):
    pipeline_for(ci, project, jobs=[job("test", "failed"), job("hold", "blocked", requires=["test"],
                                                               type="approval")])
    applied(project, moto_reset)
    ci.finish_on_poll = True
    result = project.inv("ci.rerun", "--env", "stg", "--wait", "--force")
    assert_clean_failure(result, "on hold", "approval job hold", "inv ci.approve --env stg --job hold")
    assert result.code == 5
    assert ci.count("POST", RERUN) == 1


# -- approve -----------------------------------------------------------------------------------

APPROVE = "/api/v2/workflow/*/approve/*"


def held_jobs():
    return [job("test"), job("hold", "on_hold", requires=["test"], type="approval"),
            job("deploy-stg", "blocked", requires=["hold"])]


def test_approve_the_job_on_hold(project, ci):
    pipeline = pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    result = project.inv("ci.approve", "--env", "stg")
    assert result.code == 0, result.all
    assert "Approved hold" in result.out
    assert ci.count("POST", APPROVE) == 1
    assert pipeline.workflows[0].job("hold").status == "success"
    assert pipeline.workflows[0].status == "running"


def test_approve_when_already_approved_exits_0(project, ci):
    pipeline = pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    wf = pipeline.workflows[0]
    ci.complete_job(wf.id, "hold", "success")
    result = project.inv("ci.approve", "--env", "stg", "--job", "hold")
    assert result.code == 0, result.all
    assert "already approved" in result.out
    assert ci.count("POST") == 0


def test_approve_a_protected_environment_asks_first(tmp_path, moto_reset, aws_env, ci):
    project = Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(moto_reset), branch="prod")
    pipeline = ci.add_pipeline(SLUG, "prod", head(project), workflows=[(WORKFLOW, "on_hold", held_jobs())])
    refused = project.inv("ci.approve", "--env", "prod")
    assert_clean_failure(refused, "Confirmation needed", "Approve hold", "(protected)", "--yes")
    assert ci.count("POST") == 0
    approved = project.inv("ci.approve", "--env", "prod", "--yes")
    assert approved.code == 0, approved.all
    assert ci.count("POST", APPROVE) == 1
    assert pipeline.workflows[0].job("hold").status == "success"


def test_approve_only_for_the_workflow_of_this_commit(project, ci):
    ci.add_pipeline(SLUG, "staging", "a" * 40, workflows=[(WORKFLOW, "on_hold", held_jobs())])
    result = project.inv("ci.approve", "--env", "stg")
    assert_clean_failure(result, head(project)[:12], "a" * 12)
    assert ci.count("POST") == 0
    latest = project.inv("ci.approve", "--env", "stg", "--latest")
    assert latest.code != 0 and ci.count("POST") == 0  # there is no --latest for approvals


def test_approve_a_job_that_is_not_on_hold_is_refused(project, ci):
    pipeline_for(ci, project, status="failed", jobs=[job("test", "failed"),
                                                     job("hold", "blocked", requires=["test"], type="approval")])
    result = project.inv("ci.approve", "--env", "stg")
    assert_clean_failure(result, "hold", "blocked", "not on hold", "nothing was changed")
    assert ci.count("POST") == 0


def test_diagnose_and_status_explain_on_hold(project, ci):
    pipeline_for(ci, project, status="on_hold", jobs=held_jobs())
    result = project.inv("ci.diagnose", "--env", "stg")
    assert result.code == 0, result.all
    assert "on hold (not a failure)" in result.out and "approval job hold" in result.out
    assert "inv ci.approve --env stg --job hold" in result.out


# -- 404, shapes, empty pipelines, seconds -------------------------------------------------------


def test_404_with_a_project_token_is_told_apart_from_a_wrong_slug(project, ci):
    ci.project_tokens.add("project-token-5678")
    pipeline_for(ci, project)
    result = project.inv("ci.status", "--env", "stg", env={**project.env, "CIRCLECI_TOKEN": "project-token-5678"})
    assert_clean_failure(result, "not a personal API token", "project API token gets 404")
    assert "project-token-5678" not in result.all
    assert ci.count("GET", "/api/v2/me") == 1


@pytest.mark.parametrize(("task", "pattern", "body", "needle"), [
    ("ci.status", "/api/v2/project/*/pipeline", {"items": ["a", 1]}, "items[0] is a string"),
    ("ci.status", "/api/v2/project/*/pipeline", {"items": [{"id": "p", "number": 1, "vcs": "x"}]}, ".vcs is a"),
    ("ci.status", "/api/v2/pipeline/*/workflow", {"items": [{"name": WORKFLOW, "status": "x"}]}, ".id is missing"),
    ("ci.status", "/api/v2/workflow/*/job", {"items": [{"name": None, "status": "failed"}]}, ".name is null"),
    ("ci.diagnose", "/api/v1.1/*", {"steps": ["x"]}, "steps[0] is a string"),
])
def test_answers_of_the_wrong_shape_end_in_a_message(project, ci, task, pattern, body, needle):
    pipeline_for(ci, project, jobs=gated_jobs())
    ci.fault(pattern, body=body, count=None)
    result = project.inv(task, "--env", "stg")
    assert_clean_failure(result, "wrong shape", needle, pattern.split("*")[0])


def test_a_pipeline_that_lists_its_workflows_a_moment_later(project, ci):
    pipeline_for(ci, project)
    ci.fault("/api/v2/pipeline/*/workflow", body={"items": [], "next_page_token": None})
    result = project.inv("ci.status", "--env", "stg")
    assert result.code == 0, result.all
    assert "lists no workflows yet" in result.out and f"workflow {WORKFLOW}: failed" in result.out


@pytest.mark.parametrize("flags", [("--poll-s", "1e300"), ("--poll-s", "inf"), ("--poll-s", "9" * 400)])
def test_rerun_caps_the_seconds_flag(project, ci, flags):
    result = project.inv("ci.rerun", "--env", "stg", "--wait", *flags)
    assert_clean_failure(result, "--poll-s takes a number of seconds from")


@pytest.mark.parametrize("flags", [("--settle-s", "1e12"), ("--timeout-s", "1e301", "--poll-s", "1e300")])
def test_gate_caps_the_seconds_flags(project, flags):
    result = project.inv("ci.gate", "--env", "stg", *flags)
    assert_clean_failure(result, "takes a number of seconds from", "to 86400")
