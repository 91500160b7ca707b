"""The CircleCI adapter without a server: settings, answers turned into values, shapes, errors, retry policy.

The client's HTTP session is replaced by :class:`Canned`, which answers from a list: no socket is opened.
"""

from __future__ import annotations

import json
from datetime import timezone

import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import HTTPResponse

from runbook import circleci
from runbook.ci import Job, StepOutputUnavailable
from runbook.circleci import CircleCIClient, MalformedAnswer, OutcomeUnknown
from runbook.errors import RunbookError

SLUG = "gh/acme/acme-api"
TOKEN = "SENTINEL-TOKEN-do-not-print-8f3a"
WORKFLOW = {"id": "w1", "name": "build-test-deploy", "status": "failed", "pipeline_id": "p1", "pipeline_number": 7,
            "created_at": "2026-01-02T03:04:05.678Z"}


def answer(status: int = 200, body=None, *, text: str | None = None, headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code, response.reason = status, "Reason"
    response._content = (json.dumps(body) if text is None else text).encode()
    response.headers.update({"Content-Type": "application/json", **(headers or {})})
    return response


class Canned:
    """A stand-in for the client's requests session: answers (or raises) from a list, records what was asked."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), []

    def request(self, method, url, **kwargs):
        self.asked.append((method, url, kwargs.get("params"), kwargs.get("json")))
        reply = self.answers.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def canned(*answers, slug: str = SLUG, token: str = TOKEN) -> tuple[CircleCIClient, Canned]:
    client = CircleCIClient(slug, env={"CIRCLECI_TOKEN": token, "CIRCLECI_HOST": "http://ci.test"}, retries=2,
                            backoff_factor=0.0)
    client._api = client._plain = session = Canned(*answers)
    return client, session


def page(*items, next_page_token=None) -> requests.Response:
    return answer(body={"items": list(items), "next_page_token": next_page_token})


# -- settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "source"), [
    ({"CIRCLECI_TOKEN": "GOOD", "CIRCLE_TOKEN": "bad", "CIRCLECI_CLI_TOKEN": "bad"}, "CIRCLECI_TOKEN"),
    ({"CIRCLECI_TOKEN": " ", "CIRCLE_TOKEN": "GOOD", "CIRCLECI_CLI_TOKEN": "bad"}, "CIRCLE_TOKEN"),
    ({"CIRCLECI_CLI_TOKEN": "GOOD"}, "CIRCLECI_CLI_TOKEN"),
])
def test_the_token_comes_from_the_first_variable_that_has_one(env, source):
    client = CircleCIClient(SLUG, env=env)
    assert client.token_source == source and client._token == "GOOD"


def test_no_token_names_the_three_variables_and_where_to_make_one():
    with pytest.raises(RunbookError) as caught:
        CircleCIClient(SLUG, env={})
    assert caught.value.id == "circleci-no-token"
    for name in ("CIRCLECI_TOKEN", "CIRCLE_TOKEN", "CIRCLECI_CLI_TOKEN", "Personal API Tokens"):
        assert name in str(caught.value)


@pytest.mark.parametrize("token", ["abc def", "abc\ndef", "tökén"])
def test_a_garbled_token_is_refused_without_showing_it(token):
    with pytest.raises(RunbookError) as caught:
        CircleCIClient(SLUG, env={"CIRCLE_TOKEN": token})
    assert caught.value.id == "circleci-setting-invalid" and "CIRCLE_TOKEN" in str(caught.value)
    assert token not in str(caught.value)


def test_the_host_comes_from_the_variables_then_the_configuration_then_the_default():
    token = {"CIRCLECI_TOKEN": "t"}
    cases = [
        ({"CIRCLECI_HOST": "http://a.test/", "CIRCLECI_CLI_HOST": "http://b.test"}, "http://c.test", "http://a.test",
         "CIRCLECI_HOST"),
        ({"CIRCLECI_CLI_HOST": "http://b.test"}, "http://c.test", "http://b.test", "CIRCLECI_CLI_HOST"),
        ({}, "circleci.example.com", "https://circleci.example.com", "circleci.host"),
        ({}, None, "https://circleci.com", "default"),
    ]
    for env, config_host, host, source in cases:
        client = CircleCIClient(SLUG, config_host, env={**token, **env})
        assert client.host == host and source in client.host_source


@pytest.mark.parametrize("host", ["ftp://example.com", "http://", "http://exa mple.com"])
def test_a_host_that_is_not_an_http_url_is_refused(host):
    with pytest.raises(RunbookError, match="CIRCLECI_HOST") as caught:
        CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": "t", "CIRCLECI_HOST": host})
    assert caught.value.id == "circleci-setting-invalid"


@pytest.mark.parametrize("host", ["https://circleci.example.com/api", "https://circleci.example.com/api/v2/",
                                  "https://circleci.example.com?a=b", "https://circleci.example.com#frag",
                                  "https://user:pass1234@circleci.example.com"])
def test_a_host_with_a_path_is_refused_before_any_request_not_blamed_on_the_token(host):
    with pytest.raises(RunbookError) as caught:
        CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": "t", "CIRCLECI_HOST": host})
    assert caught.value.id == "circleci-setting-invalid" and "the runbook adds /api/v2/... itself" in caught.value.what
    assert caught.value.fix == "export CIRCLECI_HOST=https://circleci.example.com" and "token" not in str(caught.value)
    assert "pass1234" not in str(caught.value)


def test_web_urls_of_circleci_and_of_a_server_installation():
    wid = "0b9a7d1e-0000-4000-8000-000000000001"
    cloud = CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": "t"})
    server = CircleCIClient(SLUG, "circleci.example.com/", env={"CIRCLECI_TOKEN": "t"})
    assert cloud.web_url(12, wid) == f"https://app.circleci.com/pipelines/{SLUG}/12/workflows/{wid}"
    assert server.web_url(3) == f"https://circleci.example.com/pipelines/{SLUG}/3"


# -- answers become values --------------------------------------------------------------------------------------


def test_pipelines_workflows_and_jobs_become_frozen_values():
    client, session = canned(
        page({"id": "p1", "number": 7, "state": "created", "created_at": "2026-01-02T03:04:05.678Z",
              "vcs": {"revision": "a" * 40, "branch": "feature/x"}, "trigger": {"type": "webhook"}}),
        page(WORKFLOW),
        page({"name": "test", "status": "success", "type": "build", "id": "j1", "job_number": 3,
              "started_at": "2026-01-02T03:04:05Z", "stopped_at": "2026-01-02T03:05:10Z"},
             {"name": "hold", "status": "on_hold", "type": "approval", "approval_request_id": "r1"}))
    (pipeline,) = client.pipelines("feature/x")
    assert (pipeline.id, pipeline.number, pipeline.revision) == ("p1", 7, "a" * 40)
    assert pipeline.created_at.tzinfo == timezone.utc and pipeline.state == "created"
    assert session.asked[0][1:3] == (f"http://ci.test/api/v2/project/{SLUG}/pipeline", {"branch": "feature/x"})
    (workflow,) = client.workflows("p1")
    assert (workflow.name, workflow.status, workflow.pipeline_id, workflow.pipeline_number) == (
        "build-test-deploy", "failed", "p1", 7)
    test, hold = client.jobs("w1")
    assert (test.job_number, test.duration, test.approval, test.failed) == (3, "1m05s", False, False)
    assert (hold.approval, hold.approval_request_id, hold.duration) == (True, "r1", "")
    with pytest.raises(AttributeError):
        hold.status = "success"  # frozen


@pytest.mark.parametrize(("call", "body", "problem"), [
    ("pipelines", {"items": ["a", 1]}, "'a' is not of type 'object' (at $.items[0])"),
    ("pipelines", {"items": [{"id": "p", "number": 1, "vcs": "x"}]}, "(at $.items[0].vcs)"),
    ("pipelines", {"next_page_token": None}, "'items' is a required property"),
    ("workflows", {"items": [{"name": "w", "status": "failed"}]}, "'id' is a required property (at $.items[0])"),
    ("jobs", {"items": [{"name": None, "status": "failed"}]}, "None is not of type 'string' (at $.items[0].name)"),
    ("workflow", {**WORKFLOW, "status": 3}, "3 is not of type 'string' (at $.status)"),
])
def test_answers_of_the_wrong_shape_name_the_endpoint_and_the_field(call, body, problem):
    client, _ = canned(answer(body=body))
    with pytest.raises(MalformedAnswer) as caught:
        result = getattr(client, call)("x" if call != "pipelines" else None)
        list(result)
    assert "wrong shape" in caught.value.what and problem in caught.value.what, caught.value.what
    assert "/api/v2/" in caught.value.what and "CIRCLECI_HOST" in caught.value.fix


def test_an_answer_that_is_not_json_names_the_endpoint():
    client, _ = canned(answer(text="<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"}))
    with pytest.raises(MalformedAnswer, match="not JSON") as caught:
        client.workflow("wf-1")
    assert "GET /api/v2/workflow/wf-1" in str(caught.value) and "text/html" in str(caught.value)


def test_an_answer_nested_deeper_than_the_stack_is_malformed_not_a_defect():
    client, _ = canned(answer(text="[" * 5000 + "]" * 5000, headers={"Content-Type": "application/json"}))
    with pytest.raises(MalformedAnswer, match="not JSON"):
        client.workflow("wf-1")


def test_a_rerun_accepted_without_the_new_id_warns_not_to_rerun_blindly():
    client, _ = canned(answer(202, {"message": "Accepted."}))
    with pytest.raises(MalformedAnswer) as caught:
        client.rerun(circleci._workflow(WORKFLOW))
    assert "'workflow_id' is a required property" in caught.value.what and "inv ci.status" in caught.value.fix


# -- errors ----------------------------------------------------------------------------------------------------


def test_an_unexpected_answer_keeps_its_status_and_circleci_s_message():
    client, _ = canned(answer(409, {"message": "Conflict: the workflow is being rerun"}))
    with pytest.raises(RunbookError) as caught:
        client.workflow("w1")
    assert caught.value.id == "circleci-error"
    assert "409" in caught.value.what and "Conflict: the workflow is being rerun" in caught.value.what


def test_a_get_answered_5xx_after_its_retries_says_the_status_the_message_and_the_attempts():
    client, _ = canned(answer(503, {"message": "Service unavailable."}))
    with pytest.raises(RunbookError) as caught:
        client.workflow("w1")
    assert caught.value.id == "circleci-unreachable" and not isinstance(caught.value, OutcomeUnknown)
    assert "503" in caught.value.what and "Service unavailable." in caught.value.what and "3 attempt(s)" in str(
        caught.value)


def test_a_post_answered_5xx_is_of_unknown_outcome():
    client, _ = canned(answer(502, {"message": "Bad gateway."}))
    with pytest.raises(OutcomeUnknown) as caught:
        client._call("POST", "/workflow/w1/rerun", body={})
    assert "502" in caught.value.what and "Bad gateway." in caught.value.what and "may have acted" in caught.value.what


def test_a_message_that_echoes_the_token_is_scrubbed():
    client, _ = canned(answer(400, {"message": f"bad token {TOKEN}"}))
    with pytest.raises(RunbookError) as caught:
        client.workflow("w1")
    assert TOKEN not in str(caught.value) and "bad token ****" in str(caught.value)


def test_a_message_from_circleci_is_one_escaped_line_in_the_error():
    client, _ = canned(answer(400, {"message": "no\x1b]0;PWNED\x07 rerun\r\nERROR [fake]: all good"}))
    with pytest.raises(RunbookError) as caught:
        client.workflow("w1")
    assert "\\x1b]0;PWNED\\x07 rerun\\x0d\\nERROR [fake]" in caught.value.what
    assert not {"\x1b", "\x07", "\r", "\n"} & set(caught.value.what)


def test_a_token_too_short_to_be_real_does_not_mangle_the_message():
    client, _ = canned(answer(401, {"message": "Invalid token provided."}), token="e")
    with pytest.raises(RunbookError) as caught:
        client.workflow("w1")
    assert "Invalid token provided." in str(caught.value)


def _failed(reason):
    return requests.ConnectionError(MaxRetryError(None, "/api/v2/workflow/w1", reason))


@pytest.mark.parametrize(("method", "exc", "kind", "needles"), [
    ("GET", _failed(NewConnectionError(None, "[Errno 111] Connection refused")), RunbookError,
     ("connection refused or host unknown", "ci.test", "CIRCLECI_HOST")),
    ("POST", requests.ConnectTimeout(MaxRetryError(None, "/x", ConnectTimeoutError("timed out"))), RunbookError,
     ("no connection within 5 s", "ci.test")),
    ("GET", _failed(ReadTimeoutError(None, "/x", "Read timed out.")), RunbookError, ("did not answer GET", "30 s")),
    ("POST", requests.ReadTimeout(ReadTimeoutError(None, "/x", "Read timed out.")), OutcomeUnknown,
     ("did not answer POST", "may have acted")),
    ("POST", requests.ConnectionError(ProtocolError("Connection aborted.")), OutcomeUnknown,
     ("dropped the connection during POST",)),
    ("GET", _failed(SSLError("certificate verify failed: self-signed certificate")), RunbookError,
     ("SSLError", "certificate verify failed: self-signed certificate")),
])
def test_a_transport_failure_says_what_failed_and_chains_nothing_that_holds_the_token(method, exc, kind, needles):
    client, _ = canned(exc)
    with pytest.raises(RunbookError) as caught:
        client._call(method, "/workflow/w1")
    assert type(caught.value) is kind, caught.value
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # raised outside the except


def test_step_output_of_a_circleci_slug_or_a_job_not_started_makes_no_request():
    client, session = canned(slug="circleci/8e2b6a60-1f0c/0f9e8d7c-6b5a")
    with pytest.raises(StepOutputUnavailable, match="API v1.1 only serves"):
        list(client.step_output(Job("test", "failed", job_number=12)))
    client, session = canned()
    with pytest.raises(StepOutputUnavailable, match="has not started"):
        list(client.step_output(Job("test", "failed")))
    assert session.asked == []


def test_the_token_is_in_the_api_session_only():
    client = CircleCIClient(SLUG, env={"CIRCLECI_TOKEN": TOKEN})
    assert client._api.headers["Circle-Token"] == TOKEN
    assert "Circle-Token" not in client._plain.headers and client._plain.trust_env is False  # no ~/.netrc either
    assert TOKEN not in repr(client)


def test_step_output_is_the_failed_steps_output_read_through_the_session_without_the_token():
    steps = [{"name": "Checkout", "actions": [{"status": "success", "exit_code": 0, "output_url": "https://s3/a?s"}]},
             {"name": "Deploy", "actions": [{"status": "failed", "exit_code": 1, "failed": True,
                                             "output_url": "https://s3/b?X-Amz-Signature=1"}]}]
    client, api = canned(answer(body={"steps": steps}))
    client._plain = plain = Canned(answer(body=[{"message": "one\ntwo"}, {"message": "three"}]))
    assert list(client.step_output(Job("deploy-stg", "failed", job_number=9))) == [("Deploy", "one\ntwo\nthree")]
    assert [url for _, url, _, _ in api.asked] == ["http://ci.test/api/v1.1/project/github/acme/acme-api/9"]
    assert [url for _, url, _, _ in plain.asked] == ["https://s3/b?X-Amz-Signature=1"]


def test_an_expired_output_link_says_so_without_its_signature():
    client, _ = canned(answer(body={"steps": [{"name": "Deploy", "actions": [
        {"failed": True, "output_url": "https://s3/b?X-Amz-Signature=secret"}]}]}))
    client._plain = Canned(answer(403, text="<Error><Code>AccessDenied</Code></Error>"))
    with pytest.raises(StepOutputUnavailable, match="expire") as caught:
        list(client.step_output(Job("deploy-stg", "failed", job_number=9)))
    assert "X-Amz" not in str(caught.value) and "https://s3/b" in str(caught.value)


# -- retry policy ----------------------------------------------------------------------------------------------


def _response(status: int, **headers) -> HTTPResponse:
    return HTTPResponse(body=b"", headers=headers, status=status)


def test_get_is_retried_after_429_and_5xx_and_a_post_after_no_answer_at_all():
    policy = circleci.retry_policy(4, 0.5, 60)
    assert all(policy.is_retry("GET", status) for status in (429, 500, 502, 503, 504, 599))
    assert not any(policy.is_retry("GET", status) for status in (400, 401, 403, 404, 409))
    # a POST: never after an answer, not even 503 with Retry-After (urllib3's default would resend that)
    assert not any(policy.is_retry("POST", status, has_retry_after=True) for status in (429, 500, 502, 503))
    with pytest.raises(ReadTimeoutError):  # sent, maybe processed: not sent again
        policy.increment("POST", "/rerun", error=ReadTimeoutError(None, "/rerun", "timed out"))
    with pytest.raises(ProtocolError):
        policy.increment("POST", "/rerun", error=ProtocolError("Connection aborted."))
    again = policy.increment("POST", "/rerun", error=NewConnectionError(None, "refused"))  # never sent
    assert again.connect == 3
    assert policy.increment("GET", "/x", error=ReadTimeoutError(None, "/x", "timed out")).read == 3


def test_backoff_is_jittered_exponential_capped_and_retry_after_is_capped_too():
    policy = circleci.retry_policy(10, 0.5, 3.0)
    for _ in range(3):
        policy = policy.increment("GET", "/x", response=_response(503))
    waits = {policy.get_backoff_time() for _ in range(20)}  # third retry: 0.5 * 2**2 = 2 s, plus up to 0.5 s
    assert all(2.0 <= w <= 2.5 for w in waits) and len(waits) > 1
    for _ in range(3):
        policy = policy.increment("GET", "/x", response=_response(503))
    assert policy.get_backoff_time() == 3.0
    assert policy.get_retry_after(_response(429, **{"Retry-After": "3600"})) == 3.0


def test_each_wait_is_announced_and_an_unreadable_retry_after_falls_back_to_the_backoff(monkeypatch):
    slept, said = [], []
    monkeypatch.setattr(circleci.time, "sleep", slept.append)
    policy = circleci.retry_policy(4, 0.5, 60, notify=said.append)
    policy = policy.increment("GET", "/api/v2/workflow/w1?x=1", response=_response(429, **{"Retry-After": "2"}))
    policy.sleep(_response(429, **{"Retry-After": "2"}))
    policy = policy.increment("GET", "/api/v2/workflow/w1", response=_response(429, **{"Retry-After": "soon"}))
    policy.sleep(_response(429, **{"Retry-After": "soon"}))
    assert slept[0] == 2 and 1.0 <= slept[1] <= 1.5
    assert said[0] == "CircleCI answered 429 to GET /api/v2/workflow/w1; retrying in 2.0 s"
