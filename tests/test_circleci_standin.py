"""The CircleCI stand-in behaves as the reference doc says (spoken to with plain requests)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests import ci_fixtures
from tests.circleci_standin import DEFAULT_SLUG, CircleCIStandIn, job

SLUG = DEFAULT_SLUG


ci = ci_fixtures.ci  # two items a page, so that paging is used


def api(ci, method, path, *, token=True, **kwargs):
    headers = {"Circle-Token": ci.token} if token else {}
    return requests.request(method, ci.api_url + path, headers=headers, timeout=5, **kwargs)


def all_items(ci, path, **params):
    items, pages = [], 0
    while True:
        data = api(ci, "GET", path, params=params).json()
        items += data["items"]
        pages += 1
        if not data["next_page_token"]:
            return items, pages
        params["page-token"] = data["next_page_token"]


def jobs_by_name(ci, workflow_id):
    items, _ = all_items(ci, f"/workflow/{workflow_id}/job")
    return {j["name"]: j for j in items}


def rerun(ci, workflow_id, body=None):
    return api(ci, "POST", f"/workflow/{workflow_id}/rerun", json={"from_failed": True} if body is None else body)


# -- auth and projects ------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_with_circleci_message(ci):
    for response in (
        api(ci, "GET", f"/project/{SLUG}/pipeline", token=False),
        requests.get(ci.api_url + f"/project/{SLUG}/pipeline", headers={"Circle-Token": "nope"}, timeout=5),
    ):
        assert response.status_code == 401
        assert response.json() == {"message": "Invalid token provided."}
    assert [r.token for r in ci.requests] == ["none", "invalid"]


def test_unknown_slug_is_404_project_not_found(ci):
    response = api(ci, "GET", "/project/gh/acme/nope/pipeline")
    assert response.status_code == 404
    assert response.json() == {"message": "Project not found"}


def test_circleci_slug_with_uuids_is_opaque(ci):
    slug = "circleci/8e2b6a60-1f0c-4b1e-9f6e-2d1f0a1b2c3d/0f9e8d7c-6b5a-4a3b-9c2d-1e0f9a8b7c6d"
    pipeline = ci.add_pipeline(slug, "main", "abc123")
    items, _ = all_items(ci, f"/project/{slug}/pipeline")
    assert [p["id"] for p in items] == [pipeline.id]
    assert items[0]["project_slug"] == slug


# -- pipelines and pagination -----------------------------------------------------------


def test_pipelines_are_newest_first_paged_and_filtered_by_branch(ci):
    made = [ci.add_pipeline(SLUG, "feature/x" if n % 2 else "main", f"rev{n}") for n in range(7)]
    first = api(ci, "GET", f"/project/{SLUG}/pipeline").json()
    assert len(first["items"]) == 2 and first["next_page_token"]
    items, pages = all_items(ci, f"/project/{SLUG}/pipeline")
    assert [p["number"] for p in items] == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 4
    feature, _ = all_items(ci, f"/project/{SLUG}/pipeline", branch="feature/x")
    assert [p["vcs"]["revision"] for p in feature] == ["rev5", "rev3", "rev1"]
    assert {p["vcs"]["branch"] for p in feature} == {"feature/x"}
    assert feature[0]["id"] == made[5].id and "created_at" in feature[0] and feature[0]["state"]


def test_bad_page_token_is_400(ci):
    ci.add_pipeline(SLUG, "main")
    response = api(ci, "GET", f"/project/{SLUG}/pipeline", params={"page-token": "garbage!"})
    assert response.status_code == 400


# -- workflows and jobs ---------------------------------------------------------------------


def test_workflows_and_jobs_have_the_documented_fields(ci):
    pipeline = ci.add_pipeline(SLUG, "staging", "abc", workflows=[("build-test-deploy", "on_hold")])
    workflows, _ = all_items(ci, f"/pipeline/{pipeline.id}/workflow")
    (wf,) = workflows
    assert wf["status"] == "on_hold" and wf["pipeline_number"] == pipeline.number
    assert wf["project_slug"] == SLUG and wf["stopped_at"] is None and wf["created_at"]
    assert api(ci, "GET", f"/workflow/{wf['id']}").json() == wf
    jobs = jobs_by_name(ci, wf["id"])
    assert jobs["build"]["type"] == "build" and isinstance(jobs["build"]["job_number"], int)
    hold = jobs["hold"]
    assert hold["type"] == "approval" and hold["status"] == "on_hold" and hold["approval_request_id"]
    assert hold["dependencies"] == [jobs["build"]["id"]]
    assert jobs["deploy"]["status"] == "blocked" and "job_number" not in jobs["deploy"]


def test_workflow_status_follows_the_jobs(ci):
    pipeline = ci.add_pipeline(SLUG, "main")
    wf = ci.add_workflow(pipeline, "w", jobs=[job("a", "failed"), job("b", "running")])
    assert wf.status == "failing"
    ci.advance(wf.id)
    assert wf.status == "failed" and wf.stopped_at is not None
    held = ci.add_workflow(pipeline, "h", jobs=[job("a", "failed"), job("ok", "on_hold", type="approval")])
    assert held.status == "failing"
    with pytest.raises(ValueError):
        ci.add_workflow(pipeline, "x", "success", jobs=[job("a", "failed")])


def test_unknown_workflow_and_pipeline_are_404(ci):
    assert api(ci, "GET", "/workflow/0000/job").status_code == 404
    assert api(ci, "GET", "/pipeline/0000/workflow").status_code == 404


# -- rerun from failed ----------------------------------------------------------------------


def failed_workflow(ci):
    """lint ok; build ok -> test FAILED -> package (blocked) -> deploy (blocked); docs needs build only."""
    pipeline = ci.add_pipeline(SLUG, "staging", "abc")
    return ci.add_workflow(
        pipeline,
        "build-test-deploy",
        "failed",
        jobs=[
            job("lint"),
            job("build"),
            job("test", "failed", requires=["build"]),
            job("docs", requires=["build"]),
            job("package", "blocked", requires=["test"]),
            job("deploy", "blocked", requires=["package", "lint"]),
        ],
    )


def test_rerun_from_failed_makes_a_new_workflow_rerunning_failed_jobs_and_dependents(ci):
    wf = failed_workflow(ci)
    before = jobs_by_name(ci, wf.id)
    response = rerun(ci, wf.id)
    assert response.status_code == 202
    new_id = response.json()["workflow_id"]
    assert new_id != wf.id
    workflows, _ = all_items(ci, f"/pipeline/{wf.pipeline.id}/workflow")
    assert {w["id"] for w in workflows} == {wf.id, new_id}
    assert {w["name"] for w in workflows} == {"build-test-deploy"}
    after = jobs_by_name(ci, new_id)
    for kept in ("lint", "build", "docs"):
        assert after[kept]["status"] == "success"
        assert after[kept]["job_number"] == before[kept]["job_number"]
    assert after["test"]["status"] == "running"
    assert after["test"]["job_number"] != before["test"]["job_number"]
    assert after["package"]["status"] == "blocked" and after["deploy"]["status"] == "blocked"
    assert api(ci, "GET", f"/workflow/{new_id}").json()["status"] == "running"
    assert api(ci, "GET", f"/workflow/{wf.id}").json()["status"] == "failed"  # the old one is untouched


def test_rerun_workflow_can_be_advanced_to_success_or_failure(ci):
    wf = failed_workflow(ci)
    new_id = rerun(ci, wf.id).json()["workflow_id"]
    statuses = [ci.advance(new_id)[0] for _ in range(3)]
    assert statuses == ["running", "running", "success"]
    again = rerun(ci, failed_workflow(ci).id).json()["workflow_id"]
    ci.set_job_outcome(again, "test", "failed")
    assert ci.advance(again) == ["failed"]
    assert jobs_by_name(ci, again)["package"]["status"] == "blocked"
    third = rerun(ci, again).json()["workflow_id"]
    assert ci.finish_workflow(third).status == "success"


@pytest.mark.parametrize("status", ["running", "failing", "on_hold"])
def test_rerun_is_refused_while_the_workflow_is_active(ci, status):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", status)
    response = rerun(ci, wf.id)
    assert response.status_code == 400
    assert status in response.json()["message"]
    assert len(wf.pipeline.workflows) == 1


def test_rerun_refuses_from_failed_with_jobs_and_ssh_without_jobs(ci):
    wf = failed_workflow(ci)
    test_id = jobs_by_name(ci, wf.id)["test"]["id"]
    assert rerun(ci, wf.id, {"from_failed": True, "jobs": [test_id]}).status_code == 400
    assert rerun(ci, wf.id, {"from_failed": True, "enable_ssh": True}).status_code == 400
    assert len(wf.pipeline.workflows) == 1
    response = rerun(ci, wf.id, {"jobs": [test_id]})
    assert response.status_code == 202


def test_rerun_refuses_setup_workflows_old_workflows_and_the_hundred_and_first(ci):
    setup = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "setup", "failed", setup=True)
    assert rerun(ci, setup.id).status_code == 400
    old = ci.add_pipeline(SLUG, "main", created_at=datetime.now(timezone.utc) - timedelta(days=91))
    assert rerun(ci, ci.add_workflow(old, "w", "failed").id).status_code == 400
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    current = wf.id
    for _ in range(100):
        response = rerun(ci, current)
        assert response.status_code == 202
        current = response.json()["workflow_id"]
        ci.finish_workflow(current, "failed")
    response = rerun(ci, current)
    assert response.status_code == 400 and "100" in response.json()["message"]


def test_rerun_of_a_successful_workflow_from_failed_is_refused(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "success")
    assert rerun(ci, wf.id).status_code == 400


# -- approval ------------------------------------------------------------------------------


def test_approve_releases_the_jobs_behind_the_approval(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    hold = jobs_by_name(ci, wf.id)["hold"]
    # the job id is not the approval request id
    assert api(ci, "POST", f"/workflow/{wf.id}/approve/{hold['id']}").status_code == 404
    response = api(ci, "POST", f"/workflow/{wf.id}/approve/{hold['approval_request_id']}")
    assert response.status_code == 202
    jobs = jobs_by_name(ci, wf.id)
    assert jobs["hold"]["status"] == "success" and jobs["deploy"]["status"] == "running"
    assert api(ci, "GET", f"/workflow/{wf.id}").json()["status"] == "running"
    again = api(ci, "POST", f"/workflow/{wf.id}/approve/{hold['approval_request_id']}")
    assert again.status_code == 400


# -- job details, v1.1 steps and output --------------------------------------------------


def test_job_details_v1_steps_and_output_without_token(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    number = jobs_by_name(ci, wf.id)["test"]["job_number"]
    details = api(ci, "GET", f"/project/{SLUG}/job/{number}").json()
    assert details["web_url"].endswith(
        f"/pipelines/github/acme/acme-api/{wf.pipeline.number}/workflows/{wf.id}/jobs/{number}"
    )
    headers = {"Circle-Token": ci.token}
    v1 = requests.get(f"{ci.url}/api/v1.1/project/github/acme/acme-api/{number}", headers=headers, timeout=5)
    steps = v1.json()["steps"]
    action = steps[-1]["actions"][0]
    assert action["failed"] is True and action["exit_code"] == 1 and action["status"] == "failed"
    with_token = requests.get(action["output_url"], headers=headers, timeout=5)
    assert with_token.status_code == 400
    output = requests.get(action["output_url"], timeout=5).json()
    assert output[0]["type"] == "out" and "error" in output[0]["message"] and output[0]["time"]
    unsigned = requests.get(action["output_url"].split("?")[0], timeout=5)
    assert unsigned.status_code == 403


def test_custom_steps_are_served(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.set_steps(wf.id, "test", [{"name": "pytest", "status": "failed", "output": "E assert 1 == 2\n"}])
    number = wf.job("test").job_number
    v1 = requests.get(
        f"{ci.url}/api/v1.1/project/github/acme/acme-api/{number}", headers={"Circle-Token": ci.token}, timeout=5
    ).json()
    assert [s["name"] for s in v1["steps"]] == ["pytest"]
    url = v1["steps"][0]["actions"][0]["output_url"]
    assert requests.get(url, timeout=5).json()[0]["message"] == "E assert 1 == 2\n"


# -- faults, counting and the log ---------------------------------------------------------


def test_faults_apply_count_times_to_matching_paths(ci):
    ci.add_pipeline(SLUG, "main")
    fault = ci.fault("/api/v2/project/*/pipeline", 429, retry_after=7, count=2)
    path = f"/project/{SLUG}/pipeline"
    first, second, third = (api(ci, "GET", path) for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["Retry-After"] == "7"
    assert fault.hits == 2
    ci.fault("*", 500, method="POST", count=None)
    assert api(ci, "GET", path).status_code == 200
    assert api(ci, "POST", "/workflow/x/rerun", json={}).status_code == 500
    assert api(ci, "POST", "/workflow/x/rerun", json={}).status_code == 500


def test_malformed_and_slow_faults(ci):
    ci.fault("*", malformed=True)
    response = api(ci, "GET", f"/project/{SLUG}/pipeline")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    ci.fault("*", delay=0.3)
    started = time.monotonic()
    assert api(ci, "GET", f"/project/{SLUG}/pipeline").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_requests_are_counted_and_logged_without_the_token_value(ci):
    ci.add_pipeline(SLUG, "feature/x")
    api(ci, "GET", f"/project/{SLUG}/pipeline", params={"branch": "feature/x"})
    api(ci, "GET", f"/project/{SLUG}/pipeline")
    api(ci, "POST", "/workflow/abc/rerun", json={"from_failed": True})
    assert ci.request_count == 3
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 2
    assert ci.count("POST") == 1
    assert ci.counts[("GET", f"/api/v2/project/{SLUG}/pipeline")] == 2
    assert ci.requests[0].raw_uri.endswith("?branch=feature%2Fx")
    assert ci.requests[2].body == {"from_failed": True}
    assert ci.token not in repr(ci.requests)


def test_refused_url_and_stopped_server_refuse_connections():
    with pytest.raises(requests.ConnectionError):
        requests.get(CircleCIStandIn.refused_url(), timeout=2)
    standin = CircleCIStandIn().start()
    url = standin.api_url + f"/project/{SLUG}/pipeline"
    assert requests.get(url, headers={"Circle-Token": standin.token}, timeout=2).status_code == 200
    standin.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, headers={"Circle-Token": standin.token}, timeout=2)


def test_auto_advance_moves_a_polled_workflow_to_its_end(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    new_id = rerun(ci, wf.id).json()["workflow_id"]
    ci.set_job_outcome(new_id, "test", "failed")
    ci.auto_advance = True
    seen = [api(ci, "GET", f"/workflow/{new_id}").json()["status"] for _ in range(3)]
    assert seen == ["running", "failed", "failed"]


def test_finish_on_poll_answers_the_end_at_the_first_poll(ci):
    done = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "running")
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "h", "running", jobs=[
        job("build", "running"), job("hold", "blocked", requires=["build"], type="approval")])
    ci.finish_on_poll = True
    assert api(ci, "GET", f"/workflow/{done.id}").json()["status"] == "success"
    assert api(ci, "GET", f"/workflow/{held.id}").json()["status"] == "on_hold"


def test_a_processed_fault_acts_then_answers_the_error(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 502, processed=True)
    assert rerun(ci, wf.id).status_code == 502
    assert len(wf.pipeline.workflows) == 2  # CircleCI made the rerun before the gateway failed
    ci.fault("*/rerun", 502)
    assert rerun(ci, wf.id).status_code == 502
    assert len(wf.pipeline.workflows) == 2


def test_body_and_query_faults(ci):
    for n in range(3):
        ci.add_pipeline(SLUG, "main", f"rev{n}")
    ci.fault("/api/v2/project/*/pipeline", 404, query="page-token")
    first = api(ci, "GET", f"/project/{SLUG}/pipeline")
    assert first.status_code == 200
    later = api(ci, "GET", f"/project/{SLUG}/pipeline", params={"page-token": first.json()["next_page_token"]})
    assert later.status_code == 404
    ci.fault("/api/v2/project/*/pipeline", body={"items": ["a", 1]})
    assert api(ci, "GET", f"/project/{SLUG}/pipeline").json() == {"items": ["a", 1]}


def test_me_answers_the_personal_token_and_a_project_token_gets_404_everywhere():
    with CircleCIStandIn(project_tokens={"proj-tok"}) as ci:
        assert api(ci, "GET", "/me").json()["login"] == "acme-dev"
        for path in ("/me", f"/project/{SLUG}/pipeline"):
            response = requests.get(ci.api_url + path, headers={"Circle-Token": "proj-tok"}, timeout=5)
            assert response.status_code == 404
        assert api(ci, "GET", "/me", token=False).status_code == 401
