"""runbook.circleci against the CircleCI stand-in: configuration, paging, retries, errors, secrecy."""

from __future__ import annotations

import logging
import time

import pytest

from runbook import circleci
from runbook.circleci import CircleCIClient, StepOutputUnavailable
from runbook.errors import RunbookError
from tests.circleci_standin import DEFAULT_SLUG, CircleCIStandIn, fast_client, job

SLUG = DEFAULT_SLUG
SENTINEL = "SENTINEL-TOKEN-do-not-print-8f3a"


@pytest.fixture
def ci():
    with CircleCIStandIn(page_size=2) as standin:
        yield standin


@pytest.fixture
def client(ci):
    with fast_client(ci) as c:
        yield c


# -- token and host ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, source",
    [
        ({"CIRCLECI_TOKEN": "GOOD", "CIRCLE_TOKEN": "bad", "CIRCLECI_CLI_TOKEN": "bad"}, "CIRCLECI_TOKEN"),
        ({"CIRCLECI_TOKEN": " ", "CIRCLE_TOKEN": "GOOD", "CIRCLECI_CLI_TOKEN": "bad"}, "CIRCLE_TOKEN"),
        ({"CIRCLECI_CLI_TOKEN": "GOOD"}, "CIRCLECI_CLI_TOKEN"),
    ],
)
def test_token_precedence(env, source):
    with CircleCIStandIn(token="GOOD") as ci:
        client = fast_client(ci, env={**env, "CIRCLECI_HOST": ci.url})
        assert client.token_source == source
        assert list(client.pipelines(SLUG)) == []
        assert ci.requests[-1].token == "valid"


def test_missing_token_names_the_three_variables_and_where_to_make_one():
    with pytest.raises(RunbookError) as caught:
        CircleCIClient(env={"CIRCLECI_HOST": "http://127.0.0.1:9"})
    text = str(caught.value)
    for name in ("CIRCLECI_TOKEN", "CIRCLE_TOKEN", "CIRCLECI_CLI_TOKEN", "Personal API Tokens"):
        assert name in text
    assert "export CIRCLECI_TOKEN=" in caught.value.fix


def test_host_precedence(ci):
    dead = CircleCIStandIn.refused_url()
    token = {"CIRCLECI_TOKEN": ci.token}
    cases = [
        ({"CIRCLECI_HOST": ci.url + "/", "CIRCLECI_CLI_HOST": dead}, dead, ci.url, "CIRCLECI_HOST"),
        ({"CIRCLECI_CLI_HOST": ci.url}, dead, ci.url, "CIRCLECI_CLI_HOST"),
        ({}, ci.url, ci.url, "circleci.host"),
        ({}, None, "https://circleci.com", "default"),
    ]
    for env, config_host, host, source in cases:
        client = CircleCIClient(config_host, env={**token, **env})
        assert client.host == host and source in client.host_source
    before = ci.request_count
    list(CircleCIClient(dead, env={**token, "CIRCLECI_CLI_HOST": ci.url}).pipelines(SLUG))
    assert ci.request_count == before + 1


def test_host_that_is_not_http_is_refused():
    with pytest.raises(RunbookError, match="CIRCLECI_HOST"):
        CircleCIClient(env={"CIRCLECI_TOKEN": "t", "CIRCLECI_HOST": "ftp://example.com"})


def test_web_url_default_and_server_host(client):
    wid = "0b9a7d1e-0000-4000-8000-000000000001"
    assert circleci.web_url(SLUG, 12, wid) == f"https://app.circleci.com/pipelines/{SLUG}/12/workflows/{wid}"
    assert client.web_url(SLUG, 12, wid) == f"{client.host}/pipelines/{SLUG}/12/workflows/{wid}"
    assert circleci.web_url(SLUG, 3, wid, host="circleci.example.com/").startswith(
        "https://circleci.example.com/pipelines/"
    )


# -- slugs, branches, paging ---------------------------------------------------------------


def test_circleci_uuid_slug_goes_into_the_path_as_is(ci, client):
    slug = "circleci/8e2b6a60-1f0c-4b1e-9f6e-2d1f0a1b2c3d/0f9e8d7c-6b5a-4a3b-9c2d-1e0f9a8b7c6d"
    pipeline = ci.add_pipeline(slug, "main", "abc")
    assert [p["id"] for p in client.pipelines(slug)] == [pipeline.id]
    assert ci.requests[-1].raw_uri == f"/api/v2/project/{slug}/pipeline"


def test_branch_is_url_encoded_as_a_query_parameter(ci, client):
    wanted = ci.add_pipeline(SLUG, "feature/x", "aaa")
    ci.add_pipeline(SLUG, "feature", "bbb")
    ci.add_pipeline(SLUG, "main", "ccc")
    assert [p["vcs"]["revision"] for p in client.pipelines(SLUG, "feature/x")] == [wanted.revision]
    assert ci.requests[-1].raw_uri.endswith("?branch=feature%2Fx")


def test_pagination_follows_next_page_token_up_to_max_pages(ci, client):
    for n in range(7):
        ci.add_pipeline(SLUG, "main", f"rev{n}")
    assert [p["number"] for p in client.pipelines(SLUG, "main")] == [7, 6, 5, 4, 3, 2, 1]
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 4
    ci.reset_log()
    assert [p["number"] for p in client.pipelines(SLUG, "main", max_pages=2)] == [7, 6, 5, 4]
    assert ci.request_count == 2
    ci.reset_log()
    first = next(iter(client.pipelines(SLUG)))  # a generator: one page is enough for the newest
    assert first["number"] == 7 and ci.request_count == 1


def test_workflows_jobs_rerun_approve_and_job_details(ci, client):
    pipeline = ci.add_pipeline(SLUG, "staging", "abc")
    failed = ci.add_workflow(
        pipeline,
        "build-test-deploy",
        "failed",
        jobs=[job("build"), job("test", "failed", requires=["build"]), job("deploy", "blocked", requires=["test"])],
    )
    held = ci.add_workflow(pipeline, "gate", "on_hold")
    assert {w["id"] for w in client.workflows(pipeline.id)} == {failed.id, held.id}
    jobs = {j["name"]: j for j in client.jobs(failed.id)}
    assert jobs["test"]["status"] == "failed"
    new_id = client.rerun({"id": failed.id})
    assert client.workflow(new_id)["status"] == "running"
    assert ci.requests[-2].body == {"from_failed": True}
    hold = {j["name"]: j for j in client.jobs(held.id)}["hold"]
    assert client.approve(held.id, hold) is True
    assert client.workflow(held.id)["status"] == "running"


def test_rerun_refused_passes_circleci_message_through(ci, client):
    running = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "running")
    with pytest.raises(RunbookError) as caught:
        client.rerun({"id": running.id})
    assert "Cannot rerun a workflow that is running" in str(caught.value)
    assert "400" in str(caught.value)


def test_approve_refused_for_a_canceled_job_is_not_already_approved(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    hold = {"name": "hold", "approval_request_id": held.job("hold").approval_request_id}
    ci.set_job_status(held.id, "hold", "canceled")  # between the read of the jobs and the POST
    with pytest.raises(RunbookError, match="400"):
        client.approve(held.id, hold)


def test_approve_twice_says_already_approved(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    hold = {"name": "hold", "approval_request_id": held.job("hold").approval_request_id}
    assert client.approve(held.id, hold) is True
    assert client.approve(held.id, hold) is False  # CircleCI answers 400; the job no longer waits
    assert ci.count("POST") == 2


# -- v1.1 steps and output -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["gh", "github"])
def test_v1_steps_and_output_fetched_without_the_token(ci, client, prefix):
    slug = f"{prefix}/acme/widgets"
    wf = ci.add_workflow(ci.add_pipeline(slug, "main"), "w", "failed")
    number = wf.job("test").job_number
    steps = client.v1_job_steps(slug, number)
    assert ci.requests[-1].path == f"/api/v1.1/project/github/acme/widgets/{number}"
    action = steps[-1]["actions"][0]
    assert action["failed"] is True
    output = client.fetch_output(action["output_url"])
    assert "error" in output[0]["message"]
    assert ci.requests[-1].path.startswith("/output/") and ci.requests[-1].token == "none"
    assert ci.requests[-1].status == 200


def test_bitbucket_slug_uses_v1_vcs_bitbucket(ci, client):
    wf = ci.add_workflow(ci.add_pipeline("bb/acme/widgets", "main"), "w", "success")
    client.v1_job_steps("bb/acme/widgets", wf.job("test").job_number)
    assert ci.requests[-1].path.startswith("/api/v1.1/project/bitbucket/acme/widgets/")


def test_circleci_slug_has_no_step_output_and_makes_no_request(ci, client):
    with pytest.raises(StepOutputUnavailable) as caught:
        client.v1_job_steps("circleci/8e2b6a60-1f0c/0f9e8d7c-6b5a", 12)
    assert isinstance(caught.value, RunbookError)
    assert "not available" in str(caught.value)
    assert ci.request_count == 0


def test_expired_output_link_is_explained(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    url = client.v1_job_steps(SLUG, wf.job("test").job_number)[-1]["actions"][0]["output_url"]
    with pytest.raises(RunbookError, match="expire") as caught:
        client.fetch_output(url.split("?")[0])
    assert "X-Amz" not in str(caught.value)


# -- retries -----------------------------------------------------------------------------------


def test_get_retries_500_then_succeeds(ci, client):
    ci.add_pipeline(SLUG, "main")
    fault = ci.fault("/api/v2/project/*", 500, count=2)
    assert len(list(client.pipelines(SLUG))) == 1
    assert fault.hits == 2 and ci.request_count == 3


def test_get_gives_up_after_retries_on_500(ci, client):
    ci.fault("*", 503, count=None)
    with pytest.raises(RunbookError) as caught:
        list(client.pipelines(SLUG))
    assert "503" in str(caught.value) and "status.circleci.com" in caught.value.fix
    assert ci.request_count == client.retries + 1


def test_429_retry_after_is_honoured(ci, client):
    ci.add_pipeline(SLUG, "main")
    ci.fault("*", 429, retry_after=1, count=1)
    started = time.monotonic()
    assert len(list(client.pipelines(SLUG))) == 1
    assert time.monotonic() - started >= 1.0
    assert ci.request_count == 2


def test_429_without_retry_after_backs_off_exponentially(ci):
    ci.fault("*", 429, count=3)
    client = fast_client(ci, backoff_factor=0.1, max_wait=5)
    started = time.monotonic()
    list(client.pipelines(SLUG))
    # waits 0, 0.2 and 0.4 s between the four attempts
    assert time.monotonic() - started >= 0.6
    assert ci.request_count == 4


def test_429_longer_than_max_wait_gives_up_at_once(ci, client):
    ci.fault("*", 429, retry_after=120, count=None)
    started = time.monotonic()
    with pytest.raises(RunbookError, match="try again in 120 s"):
        list(client.pipelines(SLUG))
    assert time.monotonic() - started < 1.0
    assert ci.request_count == 1


def test_429_after_all_retries_says_when_to_try_again(ci, client):
    ci.fault("*", 429, retry_after=0, count=None)
    with pytest.raises(RunbookError, match="throttl") as caught:
        list(client.pipelines(SLUG))
    assert "try again in" in str(caught.value)
    assert ci.request_count == client.retries + 1


def reruns(ci, wf):
    """Workflows of *wf*'s name in its pipeline, beyond *wf* itself: the reruns CircleCI made."""
    return [w for w in wf.pipeline.workflows if w.name == wf.name and w.id != wf.id]


@pytest.mark.parametrize(("status", "retry_after"), [(502, None), (503, None), (504, None), (500, None), (503, 0)])
def test_post_answered_5xx_after_circleci_acted_is_not_sent_again(ci, client, status, retry_after):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", status, processed=True, retry_after=retry_after)  # urllib3 resends a 503 with Retry-After
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 1
    assert [w.id for w in reruns(ci, wf)] == [new_id]


def test_post_answered_5xx_before_circleci_acted_is_sent_again_once(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 502)
    notes = []
    client.notify = notes.append
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 2
    assert [w.id for w in reruns(ci, wf)] == [new_id]
    assert any("looking for the new workflow in" in n for n in notes), notes
    assert any("POSTing the rerun again" in n for n in notes), notes


def test_post_timed_out_after_circleci_acted_is_not_sent_again(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", delay=1.0, processed=True)
    client = fast_client(ci, read_timeout=0.3)
    new_id = client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == 1
    assert [w.id for w in reruns(ci, wf)] == [new_id]


def test_post_that_keeps_failing_gives_up_saying_nothing_was_rerun(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 503, count=None)
    with pytest.raises(RunbookError, match="nothing was rerun"):
        client.rerun(client.workflow(wf.id))
    assert ci.count("POST") == client.retries + 1 and reruns(ci, wf) == []


def test_post_of_unknown_outcome_without_the_workflow_listing_is_not_retried(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("*/rerun", 502, processed=True)
    with pytest.raises(RunbookError, match="do not rerun again before checking"):
        client.rerun({"id": wf.id})
    assert ci.count("POST") == 1


def test_an_older_rerun_is_not_taken_for_the_new_one(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    first = client.rerun(client.workflow(wf.id))
    ci.finish_workflow(first, "failed")
    ci.fault("*/rerun", 502)
    second = client.rerun(client.workflow(first), known=[wf.id, first])
    assert second not in (wf.id, first) and ci.count("POST") == 3


def test_get_is_retried_after_a_read_timeout(ci):
    ci.fault("*", delay=1.0, count=1)
    client = fast_client(ci, read_timeout=0.3)
    assert list(client.pipelines(SLUG)) == []
    assert ci.request_count == 2


# -- give-up paths and error texts -----------------------------------------------------------


def test_timeout_names_the_host_and_the_seconds(ci):
    ci.fault("*", delay=2.0, count=None)
    client = fast_client(ci, read_timeout=0.25, retries=1)
    started = time.monotonic()
    with pytest.raises(RunbookError) as caught:
        list(client.pipelines(SLUG))
    assert time.monotonic() - started < 1.5
    text = str(caught.value)
    assert "0.25 s" in text and ci.url.split("//")[1] in text
    assert ci.request_count == 2


def test_connection_refused_names_the_host_and_circleci_host():
    url = CircleCIStandIn.refused_url()
    client = CircleCIClient(env={"CIRCLECI_TOKEN": "t", "CIRCLECI_HOST": url}, retries=2, backoff_factor=0.01)
    with pytest.raises(RunbookError) as caught:
        client.workflow("abc")
    text = str(caught.value)
    assert url.split("//")[1] in text and "CIRCLECI_HOST" in text and "refused" in text


def test_malformed_json_names_the_endpoint(ci, client):
    ci.fault("*", malformed=True)
    with pytest.raises(RunbookError) as caught:
        client.workflow("wf-1")
    assert "/api/v2/workflow/wf-1" in str(caught.value) and "not JSON" in str(caught.value)


def test_401_names_the_variable_and_how_to_fix(ci):
    client = fast_client(ci, env={"CIRCLE_TOKEN": "expired", "CIRCLECI_HOST": ci.url})
    with pytest.raises(RunbookError) as caught:
        list(client.pipelines(SLUG))
    assert "CIRCLE_TOKEN" in caught.value.what and "Invalid token provided" in caught.value.what
    assert "export CIRCLECI_TOKEN=" in caught.value.fix and "Personal API Tokens" in caught.value.fix
    assert "expired" not in str(caught.value)
    assert ci.request_count == 1  # 401 is not retried


def test_404_names_the_slug_and_the_config_field(client):
    with pytest.raises(RunbookError) as caught:
        list(client.pipelines("gh/acme/typo"))
    text = str(caught.value)
    assert "gh/acme/typo" in text and "circleci.project_slug" in text and "config/environments.yml" in text


def test_404_for_a_workflow_names_the_id(client):
    with pytest.raises(RunbookError, match="workflow 123e4567"):
        client.workflow("123e4567")


# -- the token never shows ---------------------------------------------------------------------


def _texts(error: BaseException) -> list[str]:
    out, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out += [str(error), repr(error), repr(error.args)]
        error = error.__cause__ or error.__context__
    return out


def test_sentinel_token_never_appears_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "runbook"):
        caplog.set_level(logging.DEBUG, logger=name)
    texts: list[str] = []
    with CircleCIStandIn(token=SENTINEL) as ci:
        ci.add_pipeline(SLUG, "main")
        wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "running")
        client = fast_client(ci, env={"CIRCLECI_TOKEN": SENTINEL, "CIRCLECI_HOST": ci.url}, read_timeout=0.3)
        texts += [repr(client), str(client.__dict__.get("host"))]
        scenarios = [
            (lambda: ci.fault("*", 401), lambda: list(client.pipelines(SLUG))),
            (lambda: ci.fault("*", 404), lambda: list(client.pipelines(SLUG))),
            (lambda: ci.fault("*", 429, retry_after=0, count=None), lambda: client.workflow(wf.id)),
            (lambda: ci.fault("*", 500, count=None), lambda: client.workflow(wf.id)),
            (lambda: ci.fault("*", delay=1, count=None), lambda: client.workflow(wf.id)),
            (lambda: ci.fault("*", malformed=True), lambda: client.workflow(wf.id)),
            (lambda: ci.fault("*", message=f"echo {SENTINEL}", status=400),
             lambda: client.approve(wf.id, {"name": "x", "approval_request_id": "x"})),
            (lambda: None, lambda: client.rerun({"id": wf.id})),
        ]
        for arm, call in scenarios:
            ci.clear_faults()
            arm()
            with pytest.raises(RunbookError) as caught:
                call()
            texts += _texts(caught.value)
        assert all(r.token == "valid" for r in ci.requests if not r.path.startswith("/output/"))
        texts.append(repr(ci.requests))
    refused = CircleCIClient(
        env={"CIRCLECI_TOKEN": SENTINEL, "CIRCLECI_HOST": CircleCIStandIn.refused_url()}, retries=1
    )
    with pytest.raises(RunbookError) as caught:
        refused.workflow("abc")
    texts += _texts(caught.value)
    texts.append(caplog.text)
    texts += [record.getMessage() for record in caplog.records]
    assert any("urllib3" in record.name for record in caplog.records)  # the DEBUG logs were captured
    leaks = [t for t in texts if SENTINEL in t]
    assert leaks == []


def test_unparsable_retry_after_falls_back_to_backoff(ci, client):
    ci.fault("*", 429, retry_after="soon", count=1)
    assert list(client.pipelines(SLUG)) == []
    assert ci.request_count == 2


def test_watching_a_rerun_with_auto_advance(ci, client):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    new_id = client.rerun({"id": wf.id})
    ci.auto_advance = True
    statuses = [client.workflow(new_id)["status"] for _ in range(3)]
    assert statuses == ["running", "success", "success"]
    assert statuses[-1] in circleci.TERMINAL_WORKFLOW_STATUSES
    assert "running" in circleci.ACTIVE_WORKFLOW_STATUSES


def test_approve_answered_502_after_circleci_approved_is_not_sent_again(ci, client):
    held = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "on_hold")
    hold = {"name": "hold", "approval_request_id": held.job("hold").approval_request_id}
    ci.fault("*/approve/*", 502, processed=True)
    assert client.approve(held.id, hold) is True
    assert ci.count("POST") == 1 and held.job("hold").status == "success"
