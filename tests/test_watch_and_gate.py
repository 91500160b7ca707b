"""Watching a workflow and the gate's back-off, in process, with real botocore and the CircleCI stand-in."""

from __future__ import annotations

import io
import json

import pytest

from runbook import config as configuration
from runbook import gate, pipeline
from runbook.errors import Interrupted, RunbookError
from tests.circleci_standin import fast_client
from tests.project import Project, base_config


def test_ctrl_c_stops_watching_not_the_workflow(ci):
    pipe = ci.add_pipeline("gh/acme/acme-api", "staging", workflows=[("build-test-deploy", "running")])
    workflow = pipe.workflows[0]

    def interrupted(seconds):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        pipeline.watch(fast_client(ci), workflow.id, sleep=interrupted, stream=io.StringIO())
    assert "the workflow goes on" in caught.value.message
    assert caught.value.code == 130
    assert ci.count("POST") == 0
    assert ci.workflow(workflow.id).status == "running"


def test_watch_prints_a_line_only_when_something_changes(ci):
    pipe = ci.add_pipeline("gh/acme/acme-api", "staging", workflows=[("build-test-deploy", "running")])
    workflow_id = pipe.workflows[0].id
    out = io.StringIO()
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            ci.finish_workflow(workflow_id, "success")

    result = pipeline.watch(fast_client(ci), workflow_id, poll_s=10, sleep=sleep, stream=out)
    assert result.status == "success"
    assert polls == [10, 10, 10]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # "running" once, then "success"
    assert "jobs 2/2 done" in lines[-1]


def test_watch_gives_up_after_its_timeout(ci):
    pipe = ci.add_pipeline("gh/acme/acme-api", "staging", workflows=[("build-test-deploy", "running")])
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(RunbookError) as caught:
        pipeline.watch(fast_client(ci), pipe.workflows[0].id, poll_s=10, timeout_s=25, sleep=sleep,
                       clock=lambda: now[0], stream=io.StringIO())
    assert "still running" in caught.value.message


def test_gate_backs_off_while_ssm_throttles(tmp_path, moto_reset, aws_env, aws_credentials, monkeypatch):
    import boto3

    cfg = _gate_project(tmp_path, moto_reset, aws_env, monkeypatch)
    session = boto3.Session(region_name="eu-west-1")
    body = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
    # the gate's client tries twice: the first gate poll sees Throttled
    session.events.register("before-send.ssm.GetParameter", _failing(2, 400, body, "application/x-amz-json-1.1"))
    sleeps = []
    result = gate.wait(cfg, cfg.environments["stg"], timeout_s=600, poll_s=15, settle_s=0, session=session,
                       sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert sleeps == [30], sleeps  # the poll interval doubled once, then the records matched
    assert result.polls == 1


def _gate_project(tmp_path, moto_reset, aws_env, monkeypatch):
    """A clone whose records match its commit and whose lambda role exists; its configuration."""
    import boto3

    from runbook import records

    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    # the gate runs in this process and reads the tree ids of HEAD in the clone
    monkeypatch.setattr(records, "PROJECT_ROOT", project.path)
    cfg = configuration.load(project.path / "config" / "environments.yml")
    project.write_record("account", endpoint=moto_reset)
    project.write_record("environment", endpoint=moto_reset)
    boto3.client("iam", endpoint_url=moto_reset, region_name="eu-west-1").create_role(
        RoleName="acme-api-stg-lambda-api", AssumeRolePolicyDocument=TRUST)
    return cfg


def _failing(times: int, status: int, body: bytes, content_type: str):
    """A botocore before-send hook: answer *status* with *body* the first *times* calls, then let them through.

    moto cannot answer a 5xx on demand; botocore's own event hook gives the client a real HTTP answer
    (parsed, retried and raised by botocore as AWS's would be) without a server of our own."""
    from botocore.awsrequest import AWSResponse

    left = {"n": times}

    def hook(request, **kwargs):
        if left["n"] > 0:
            left["n"] -= 1
            return AWSResponse(request.url, status, {"Content-Type": content_type}, _Raw(body))
        return None

    return hook


def test_gate_keeps_polling_through_an_iam_getrole_5xx(tmp_path, moto_reset, aws_env, aws_credentials, monkeypatch):
    import boto3
    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)  # botocore's own retry back-off
    cfg = _gate_project(tmp_path, moto_reset, aws_env, monkeypatch)
    session = boto3.Session(region_name="eu-west-1")
    body = (b'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Receiver</Type>'
            b"<Code>ServiceUnavailable</Code><Message>Service Unavailable</Message></Error>"
            b"<RequestId>1</RequestId></ErrorResponse>")
    # one 503 more than the 2 attempts of the gate's IAM client (short timeouts, one retry, as its SSM client: a
    # slow IAM must not carry the gate past its deadline): the first gate poll sees GetRole fail
    session.events.register("before-send.iam.GetRole", _failing(3, 503, body, "text/xml"))
    sleeps = []
    result = gate.wait(cfg, cfg.environments["stg"], timeout_s=600, poll_s=15, settle_s=0, session=session,
                       sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert sleeps == [30], sleeps  # backed off once, then the roles could be read
    assert result.polls == 2


def test_gate_keeps_polling_through_an_ssm_5xx(tmp_path, moto_reset, aws_env, aws_credentials, monkeypatch):
    import boto3
    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)
    cfg = _gate_project(tmp_path, moto_reset, aws_env, monkeypatch)
    session = boto3.Session(region_name="eu-west-1")
    body = b'{"__type":"InternalServerError","message":"An internal error occurred"}'
    session.events.register("before-send.ssm.GetParameter",
                            _failing(2, 500, body, "application/x-amz-json-1.1"))  # the client tries twice
    sleeps = []
    result = gate.wait(cfg, cfg.environments["stg"], timeout_s=600, poll_s=15, settle_s=0, session=session,
                       sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert sleeps == [30], sleeps
    assert result.polls == 1


def test_gate_polls_up_to_its_deadline_while_backing_off(tmp_path, moto_reset, aws_env, aws_credentials, monkeypatch):
    import boto3
    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)
    cfg = _gate_project(tmp_path, moto_reset, aws_env, monkeypatch)
    session = boto3.Session(region_name="eu-west-1")
    body = b'{"__type":"InternalServerError","message":"An internal error occurred"}'
    session.events.register("before-send.ssm.GetParameter", _failing(10_000, 500, body, "application/x-amz-json-1.1"))
    sleeps = []
    with pytest.raises(RunbookError, match="timed out after 20 s"):
        gate.wait(cfg, cfg.environments["stg"], timeout_s=20, poll_s=5, settle_s=0, session=session,
                  sleep=sleeps.append, clock=lambda: sum(sleeps))
    assert sum(sleeps) == 20, sleeps  # backed off (10 s), then the rest up to the deadline: not given up at 10 s


TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


class _Raw:
    """The raw body botocore reads from a response."""

    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kwargs):
        yield self._body


LAMBDA = {"Service": "lambda.amazonaws.com"}


@pytest.mark.parametrize(("statements", "trusted"), [
    ([{"Effect": "Allow", "Principal": LAMBDA, "Action": "sts:AssumeRole"}], True),
    ([{"Effect": "Allow", "Principal": LAMBDA, "Action": ["sts:AssumeRole"],
       "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}], True),
    ([{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}], False),
    ([{"Effect": "Allow", "Principal": LAMBDA, "Action": "sts:AssumeRole"},
      {"Effect": "Deny", "Principal": LAMBDA, "Action": "sts:AssumeRole"}], False),
    ([{"Effect": "Allow", "Principal": LAMBDA, "Action": "sts:TagSession"}], False),
])
def test_trust_policy_evaluation(statements, trusted):
    assert gate._trusts_lambda({"Version": "2012-10-17", "Statement": statements}) is trusted


@pytest.mark.parametrize(("outputs", "names", "wrong"), [
    ({"lambda_role_names": ["a", "b"]}, ["a", "b"], None),
    ({"lambda_role_names": []}, [], None),
    ({}, [], "no lambda_role_names"),
    ({"lambda_role_names": "acme-api-stg-lambda-api"}, [], "not a list"),
])
def test_recorded_roles_are_checked_for_shape(outputs, names, wrong):
    found, problem = gate.recorded_roles({"outputs": outputs})
    assert found == names
    assert (problem is None) if wrong is None else (wrong in problem)


# --- the gate speaks up: a line while it waits, a post when it starts waiting and when it opens ----------------


class WebhookStandIn:
    """A Slack-compatible incoming webhook on 127.0.0.1: notes each POSTed JSON body, answers 200 "ok"."""

    def __init__(self):
        import http.server
        import threading

        self.posts: list[dict] = []
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                standin.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/services/T0AAAAAAA/B0BBBBBBB/s3cr3tW3bh00kT0k3n"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def test_the_gate_says_how_long_it_waited_and_posts_when_it_waits_and_opens(project, aws, moto_reset):
    import subprocess
    import sys
    import time
    from pathlib import Path

    with WebhookStandIn() as hook:
        env = {**project.env, "RUNBOOK_GATE_WEBHOOK": hook.url, "CIRCLE_SHA1": "0" * 40,
               "CIRCLE_WORKFLOW_ID": "5034460f-c7c4-4c43-9457-de07e2029e7b",
               "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/acme-api/42"}
        gate_run = subprocess.Popen(
            [str(Path(sys.executable).parent / "inv"), "ci.gate", "--env", "stg", "--timeout-s", "120", "--poll-s",
             "0.2", "--settle-s", "0", "--report-min", "0.01"], cwd=project.path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(hook.posts) < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # a few "still waiting" lines
            project.write_record("account", endpoint=moto_reset)
            project.write_record("environment", endpoint=moto_reset)
            aws("iam").create_role(RoleName="acme-api-stg-lambda-api", AssumeRolePolicyDocument=json.dumps(
                {"Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                "Action": "sts:AssumeRole"}]}))
            out, err = gate_run.communicate(timeout=90)
        finally:
            gate_run.kill()
    assert gate_run.returncode == 0, out + err
    assert out.count("Still waiting for stg:") >= 2, out
    assert "min left. Pending: account nonprod" in out and "Unblock (an administrator, from branch staging): " \
        "inv iam.account --env stg && inv iam.env --name stg, or inv release --env stg." in out
    texts = [post["text"] for post in hook.posts]
    assert len(texts) == 2, texts
    assert texts[0].startswith("IAM gate for stg at commit 000000000000: WAITING for the IAM.")
    assert "inv iam.env --name stg" in texts[0] and "https://circleci.com/gh/acme/acme-api/42" in texts[0]
    assert texts[1].startswith("IAM gate for stg at commit 000000000000: OPEN after")
    for secret in ("s3cr3tW3bh00kT0k3n", project.env["CIRCLECI_TOKEN"]):
        assert not any(secret in text for text in texts) and secret not in out + err


def test_a_failed_notification_is_a_warning_never_a_failed_gate(project, aws, moto_reset):
    project.write_record("account", endpoint=moto_reset)  # the environment's record is pending: the gate waits
    result = project.inv("ci.gate", "--env", "stg", "--timeout-s", "3", "--poll-s", "0.5", "--settle-s", "0",
                         env={**project.env, "RUNBOOK_GATE_WEBHOOK": "http://127.0.0.1:9/services/x/y/secretpath1"})
    assert result.code == 1 and "gate-timeout" in result.err, result.all  # the gate's own verdict, not the post's
    assert "The gate's notification to $RUNBOOK_GATE_WEBHOOK failed (ConnectionError); the gate goes on." in result.all
    assert "secretpath1" not in result.all


def test_a_webhook_gets_one_post_within_its_deadline_whatever_it_answers(monkeypatch, capsys):
    """A bad URL, a redirect, an answer that trickles: each is one warning, within the deadline, never the URL."""
    import http.server
    import threading
    import time

    from runbook import gate

    posts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(self.path)
            if self.path.endswith("/redirect"):
                self.send_response(307)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)  # then the headers trickle, one every 2 s
            for n in range(10):
                time.sleep(2)
                self.send_header(f"X-Slow-{n}", "x")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/supersecretpath"
    try:
        for url, said in ((f"{base}/redirect", "HTTP 307"), (f"{base}/slow", "no answer within 5 s"),
                          ("http://a..b/services/T0/B0/supersecretpath", "failed (")):
            monkeypatch.setenv("RUNBOOK_GATE_WEBHOOK", url)
            started = time.monotonic()
            gate.post_webhook("IAM gate for stg: WAITING")
            assert time.monotonic() - started < 6.5
            out = capsys.readouterr()
            assert said in out.out + out.err and "supersecretpath" not in out.out + out.err and "a..b" not in out.out
    finally:
        server.shutdown()
        server.server_close()
    assert posts.count("/services/T0/B0/supersecretpath/redirect") == 1  # the redirect was not followed
