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
    # one 503 more than the IAM client's 3 attempts (aws.client): the first gate poll sees GetRole fail
    session.events.register("before-send.iam.GetRole", _failing(4, 503, body, "text/xml"))
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
