"""runbook.circleci against the CircleCI stand-in (in process, on 127.0.0.1): what only HTTP shows. Requests and
paths, paging, retries and their waits, a POST of unknown outcome, errors, and the token kept secret."""

from __future__ import annotations

import logging
import time

import pytest

from runbook.ci import Job
from runbook.circleci import CircleCIClient, OutcomeUnknown
from runbook.errors import RunbookError
from tests import ci_fixtures
from tests.ci_fixtures import SENTINEL, SLUG
from tests.circleci_standin import CircleCIStandIn, fast_client, job

ci, client = ci_fixtures.ci, ci_fixtures.client


def reruns(wf):
    """The workflows of *wf*'s name in its pipeline beyond *wf* itself: the reruns CircleCI made."""
    return [w for w in wf.pipeline.workflows if w.name == wf.name and w.id != wf.id]


# -- where requests go -------------------------------------------------------------------------------------------


def test_the_token_goes_in_its_header_to_the_host_of_the_first_variable(ci):
    client = fast_client(ci, env={"CIRCLE_TOKEN": ci.token, "CIRCLECI_HOST": ci.url,
                                  "CIRCLECI_CLI_HOST": CircleCIStandIn.refused_url()})
    assert list(client.pipelines()) == []
    assert [r.token for r in ci.requests] == ["valid"]


def test_a_circleci_slug_goes_into_the_path_as_it_is_and_a_branch_into_the_query(ci):
    slug = "circleci/8e2b6a60-1f0c-4b1e-9f6e-2d1f0a1b2c3d/0f9e8d7c-6b5a-4a3b-9c2d-1e0f9a8b7c6d"
    wanted = ci.add_pipeline(slug, "feature/x", "a" * 40)
    ci.add_pipeline(slug, "feature", "b" * 40)
    assert [p.id for p in fast_client(ci, slug).pipelines("feature/x")] == [wanted.id]
    assert ci.requests[-1].raw_uri == f"/api/v2/project/{slug}/pipeline?branch=feature%2Fx"


def test_paging_follows_next_page_token_up_to_max_pages_one_page_at_a_time(ci, client):
    for n in range(7):
        ci.add_pipeline(SLUG, "main", f"rev{n}")
    assert [p.number for p in client.pipelines("main", max_pages=5)] == [7, 6, 5, 4, 3, 2, 1]
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 4
    ci.reset_log()
    assert [p.number for p in client.pipelines("main", max_pages=2)] == [7, 6, 5, 4]
    assert ci.request_count == 2
    ci.reset_log()
    assert next(iter(client.pipelines())).number == 7 and ci.request_count == 1  # a generator: one page


def test_workflows_jobs_rerun_and_approve(ci, client):
    pipeline = ci.add_pipeline(SLUG, "staging", "abc")
    failed = ci.add_workflow(pipeline, "build-test-deploy", "failed", jobs=[
        job("build"), job("test", "failed", requires=["build"]), job("deploy", "blocked", requires=["test"])])
    held = ci.add_workflow(pipeline, "gate", "on_hold")
    assert {w.id for w in client.workflows(pipeline.id)} == {failed.id, held.id}
    assert {j.name: j.status for j in client.jobs(failed.id)}["test"] == "failed"
    new_id = client.rerun(client.workflow(failed.id))
    assert client.workflow(new_id).status == "running" and ci.requests[-2].body == {"from_failed": True}
    again = client.rerun(client.workflow(failed.id), from_failed=False)
    assert ci.requests[-1].body == {} and {j.status for j in ci.workflow(again).jobs} <= {"running", "blocked"}
    hold = {j.name: j for j in client.jobs(held.id)}["hold"]
    assert client.approve(held.id, hold) is True and client.workflow(held.id).status == "running"


def test_a_refused_rerun_passes_circleci_s_message_through(ci, client):
    running = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "running")
    with pytest.raises(RunbookError) as caught:
        client.rerun(client.workflow(running.id))
    assert "400" in str(caught.value) and "Cannot rerun a workflow that is running" in str(caught.value)


def _hold(held) -> Job:
    return Job("hold", "on_hold", "approval", approval_request_id=held.job("hold").approval_request_id)


def test_approving_twice_says_already_approved(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    assert client.approve(held.id, _hold(held)) is True
    assert client.approve(held.id, _hold(held)) is False  # CircleCI answers 400; the job no longer waits
    assert ci.count("POST") == 2


def test_approve_refused_for_a_canceled_job_is_not_already_approved(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    ci.set_job_status(held.id, "hold", "canceled")  # between the read of the jobs and the POST
    with pytest.raises(RunbookError, match="400"):
        client.approve(held.id, _hold(held))


def test_approve_answered_502_after_circleci_approved_is_not_sent_again(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    ci.fault("*/approve/*", 502, processed=True)
    assert client.approve(held.id, _hold(held)) is True
    assert ci.count("POST") == 1 and held.job("hold").status == "success"


def test_approve_answered_502_before_circleci_acted_is_not_sent_blindly(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    ci.fault("*/approve/*", 502)
    with pytest.raises(OutcomeUnknown):
        client.approve(held.id, _hold(held))
    assert ci.count("POST") == 1 and held.job("hold").status == "on_hold"


# -- step output -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("slug", "vcs"), [("gh/acme/widgets", "github"), ("github/acme/widgets", "github"),
                                           ("bb/acme/widgets", "bitbucket")])
def test_step_output_comes_from_v1_1_and_its_link_is_fetched_without_the_token(ci, slug, vcs):
    wf = ci.add_workflow(ci.add_pipeline(slug, "main"), "w", "failed")
    test = wf.job("test")
    steps = list(fast_client(ci, slug).step_output(Job("test", "failed", job_number=test.job_number)))
    assert steps == [("Run test", "test: error: step failed\n")]
    v1, output = ci.requests[-2:]
    assert v1.path == f"/api/v1.1/project/{vcs}/acme/widgets/{test.job_number}" and v1.token == "valid"
    assert output.path.startswith("/output/") and output.token == "none" and output.status == 200


# -- retries -----------------------------------------------------------------------------------------------------


def test_get_is_retried_after_5xx_each_retry_announced(ci):
    ci.add_pipeline(SLUG, "main")
    ci.fault("/api/v2/project/*", 500, count=2)
    notes: list[str] = []
    assert len(list(fast_client(ci, notify=notes.append).pipelines())) == 1
    assert ci.request_count == 3 and len(notes) == 2
    assert notes[0].startswith(f"CircleCI answered 500 to GET /api/v2/project/{SLUG}/pipeline; retrying in ")


def test_get_gives_up_after_its_retries_saying_the_status(ci, client):
    ci.fault("*", 503, count=None)
    with pytest.raises(RunbookError) as caught:
        list(client.pipelines())
    assert "503" in str(caught.value) and "status.circleci.com" in caught.value.fix
    assert ci.request_count == client.retries + 1


def test_429_retry_after_is_honoured_up_to_max_wait(ci):
    ci.fault("*", 429, retry_after=1, count=1)
    started = time.monotonic()
    assert list(fast_client(ci).pipelines()) == []
    assert time.monotonic() - started >= 1.0 and ci.request_count == 2
    ci.reset_log()
    ci.fault("*", 429, retry_after=120, count=1)  # capped: waits max_wait, not two minutes
    started = time.monotonic()
    assert list(fast_client(ci, max_wait=0.3).pipelines()) == []
    assert 0.3 <= time.monotonic() - started < 2 and ci.request_count == 2


def test_429_after_all_retries_says_when_to_try_again(ci, client):
    ci.fault("*", 429, retry_after=0, count=None)
    with pytest.raises(RunbookError, match="throttl") as caught:
        list(client.pipelines())
    assert "try again in 0 s" in str(caught.value) and ci.request_count == client.retries + 1


def test_an_unreadable_retry_after_falls_back_to_the_backoff(ci, client):
    ci.fault("*", 429, retry_after="soon", count=1)
    assert list(client.pipelines()) == [] and ci.request_count == 2


def test_get_is_retried_after_a_read_timeout(ci):
    ci.fault("*", delay=1.0, count=1)
    assert list(fast_client(ci, read_timeout=0.3).pipelines()) == [] and ci.request_count == 2


@pytest.mark.parametrize(("status", "retry_after"), [(502, None), (503, None), (504, None), (500, None), (503, 0)])
def test_post_answered_5xx_after_circleci_acted_is_not_sent_again(ci, client, status, retry_after):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", status, processed=True, retry_after=retry_after)  # urllib3 resends a 503 with Retry-After
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 1
    assert [w.id for w in reruns(wf)] == [new_id]


def test_post_answered_5xx_before_circleci_acted_is_sent_again_once(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 502)
    notes: list[str] = []
    client.notify = notes.append
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 2 and [w.id for w in reruns(wf)] == [new_id]
    assert any("looking for the new workflow in" in n for n in notes), notes
    assert any("POSTing the rerun again" in n for n in notes), notes


def test_post_timed_out_after_circleci_acted_is_not_sent_again(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", delay=1.0, processed=True)
    client = fast_client(ci, read_timeout=0.3)
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 1 and [w.id for w in reruns(wf)] == [new_id]


def test_post_that_keeps_failing_gives_up_saying_nothing_was_rerun(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 503, count=None)
    with pytest.raises(OutcomeUnknown, match="nothing was rerun"):
        client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == client.retries + 1 and reruns(wf) == []


def test_an_older_rerun_is_not_taken_for_the_new_one(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    first = client.rerun(client.workflow(wf.id))
    ci.finish_workflow(first, "failed")
    ci.fault("*/rerun", 502)
    second = client.rerun(client.workflow(first), known=[wf.id, first])
    assert second not in (wf.id, first) and ci.count("POST") == 3


# -- errors ------------------------------------------------------------------------------------------------------


def test_a_timeout_names_the_host_and_the_seconds(ci):
    ci.fault("*", delay=2.0, count=None)
    started = time.monotonic()
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci, read_timeout=0.25, retries=1).pipelines())
    assert time.monotonic() - started < 1.5 and ci.request_count == 2
    assert "0.25 s" in str(caught.value) and ci.url.split("//")[1] in str(caught.value)


def test_connection_refused_names_the_host_and_circleci_host():
    url = CircleCIStandIn.refused_url()
    with pytest.raises(RunbookError) as caught:
        CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": "t", "CIRCLECI_HOST": url}, retries=2).workflow("abc")
    assert url.split("//")[1] in str(caught.value) and "CIRCLECI_HOST" in str(caught.value)
    assert "refused" in str(caught.value)


def test_401_names_the_variable_and_how_to_fix_and_is_not_retried(ci):
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci, env={"CIRCLE_TOKEN": "expired", "CIRCLECI_HOST": ci.url}).pipelines())
    assert "CIRCLE_TOKEN" in caught.value.what and "Invalid token provided" in caught.value.what
    assert "export CIRCLECI_TOKEN=" in caught.value.fix and "Personal API Tokens" in caught.value.fix
    assert "expired" not in str(caught.value) and ci.request_count == 1


def test_404_for_a_workflow_names_the_id(client):
    with pytest.raises(RunbookError, match="workflow 123e4567") as caught:
        client.workflow("123e4567")
    assert caught.value.id == "circleci-not-found"


# -- the token never shows ---------------------------------------------------------------------------------------


def _texts(error: BaseException) -> list[str]:
    out, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out += [str(error), repr(error), repr(error.args)]
        error = error.__cause__ or error.__context__
    return out


def test_the_token_never_appears_in_errors_or_logs(ci, caplog):
    for name in ("urllib3", "requests", "runbook"):
        caplog.set_level(logging.DEBUG, logger=name)
    texts: list[str] = []
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "running")
    client = fast_client(ci, read_timeout=0.3)
    texts += [repr(client), client.host, client.host_source]
    scenarios = [
        (lambda: ci.fault("*", 401), lambda: list(client.pipelines())),
        (lambda: ci.fault("*", 404), lambda: list(client.pipelines())),
        (lambda: ci.fault("*", 429, retry_after=0, count=None), lambda: client.workflow(wf.id)),
        (lambda: ci.fault("*", 500, count=None), lambda: client.workflow(wf.id)),
        (lambda: ci.fault("*", delay=1, count=None), lambda: client.workflow(wf.id)),
        (lambda: ci.fault("*", malformed=True), lambda: client.workflow(wf.id)),
        (lambda: ci.fault("*", message=f"echo {SENTINEL}", status=400),
         lambda: client.approve(wf.id, Job("x", "on_hold", "approval", approval_request_id="x"))),
        (lambda: None, lambda: client.rerun(client.workflow(wf.id))),
    ]
    for arm, call in scenarios:
        ci.clear_faults()
        arm()
        with pytest.raises(RunbookError) as caught:
            call()
        texts += _texts(caught.value)
    assert all(r.token == "valid" for r in ci.requests if not r.path.startswith("/output/"))
    refused = CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": SENTINEL, "CIRCLECI_HOST": CircleCIStandIn.refused_url()},
                             retries=1)
    with pytest.raises(RunbookError) as caught:
        refused.workflow("abc")
    texts += [*_texts(caught.value), caplog.text, *(record.getMessage() for record in caplog.records)]
    assert any("urllib3" in record.name for record in caplog.records)  # the DEBUG logs were captured
    assert [t for t in texts if SENTINEL in t] == []
