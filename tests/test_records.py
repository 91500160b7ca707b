"""Applied records in SSM Parameter Store, against moto's in-process AWS."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import runbook
from runbook import records
from runbook.errors import RunbookError

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

PROJECT = "acme-api"
FP_A = "a" * 64
FP_B = "b" * 64
ARN = "arn:aws:sts::123456789012:assumed-role/Admin/alice"


@pytest.fixture
def aws(monkeypatch):
    """A boto3 Session on moto's in-process AWS, with fake credentials only."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        yield boto3.Session(region_name="eu-west-1")


@pytest.fixture
def ssm(aws):
    """The product's own SSM client (runbook.aws.client) on that Session."""
    from runbook import aws as runbook_aws
    from runbook.config import Account

    return runbook_aws.client(aws, "ssm", Account("nonprod", "123456789012", "eu-west-1"))


def runbook_client(endpoint: str):
    """The product's own SSM client for a moto server at *endpoint*."""
    from runbook import aws as runbook_aws
    from runbook.config import Account

    account = Account("nonprod", "123456789012", "eu-west-1", endpoint_url=endpoint)
    return runbook_aws.client(boto3.Session(region_name="eu-west-1"), "ssm", account)


def make_record(scope="stg", fingerprint=FP_A, **outputs):
    return records.Record.create(
        fingerprint=fingerprint,
        commit="1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
        branch="staging",
        applied_by=ARN,
        scope=scope,
        outputs=outputs or {"lambda_role_names": ["acme-api-stg-lambda"]},
        now=datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc),
    )


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_):
        yield self._body


def fail_calls(session_client, operation: str, code: str, times: int, calls: list):
    """Make the next *times* calls of *operation* fail with AWS error *code* before reaching moto."""
    from botocore.awsrequest import AWSResponse

    def handler(request, **_):
        calls.append(code)
        if len(calls) > times:
            return None
        body = json.dumps({"__type": code, "message": "simulated"}).encode()
        return AWSResponse(request.url, 400, {"x-amzn-RequestId": "test"}, _Raw(body))

    session_client.meta.events.register_first(f"before-send.ssm.{operation}", handler)


def test_parameter_names():
    assert records.parameter_name("acme-api", "account") == "/acme-api/iam/account"
    assert records.parameter_name("acme-api", "stg") == "/acme-api/iam/env/stg"
    assert records.parameter_name("acme-api", "env", "prod") == "/acme-api/iam/env/prod"
    assert records.parameter_name("acme-api", "environment", "dev") == "/acme-api/iam/env/dev"


@pytest.mark.parametrize("project", ["", "acme api", "acme/api", "aws-tools", "SSM-x"])
def test_unusable_project_name_points_at_config(project):
    with pytest.raises(RunbookError) as caught:
        records.parameter_name(project, "stg")
    assert "environments.yml, field project" in str(caught.value)


def test_unusable_environment_name_is_refused():
    with pytest.raises(RunbookError, match="environment name"):
        records.parameter_name("acme-api", "stg/../prod")


def test_write_then_read_round_trip(aws, ssm):
    record = make_record()
    name = records.write(ssm, PROJECT, "stg", record)
    assert name == "/acme-api/iam/env/stg"
    got = records.read(ssm, PROJECT, "stg")
    assert got == {
        "fingerprint": FP_A,
        "commit": "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
        "branch": "staging",
        "applied_by": ARN,
        "applied_at": "2024-06-01T12:00:00Z",
        "tool_version": runbook.__version__,
        "scope": "stg",
        "outputs": {"lambda_role_names": ["acme-api-stg-lambda"]},
    }


def test_written_parameter_is_standard_string_with_sorted_json(aws, ssm):
    records.write(ssm, PROJECT, "account", make_record(scope="account", account_role="x"))
    ssm = aws.client("ssm")
    parameter = ssm.get_parameter(Name="/acme-api/iam/account")["Parameter"]
    assert parameter["Type"] == "String"
    described = ssm.describe_parameters()["Parameters"][0]
    assert described["Tier"] == "Standard"
    assert parameter["Value"].startswith('{"applied_at":"2024-06-01T12:00:00Z","applied_by":')


def test_write_overwrites_the_earlier_record(aws, ssm):
    records.write(ssm, PROJECT, "stg", make_record(fingerprint=FP_A))
    records.write(ssm, PROJECT, "stg", make_record(fingerprint=FP_B))
    assert records.read(ssm, PROJECT, "stg")["fingerprint"] == FP_B


def test_account_and_environments_are_separate(aws, ssm):
    records.write(ssm, PROJECT, "account", make_record(scope="account", fingerprint=FP_A))
    records.write(ssm, PROJECT, "stg", make_record(scope="stg", fingerprint=FP_B))
    assert records.read(ssm, PROJECT, "account")["fingerprint"] == FP_A
    assert records.read(ssm, PROJECT, "stg")["fingerprint"] == FP_B
    assert records.read(ssm, PROJECT, "dev") is None


def test_never_applied_reads_none(aws, ssm):
    assert records.read(ssm, PROJECT, "stg") is None
    assert records.compare(records.read(ssm, PROJECT, "stg"), FP_A) == "never-applied"


def test_compare_current_and_pending(aws, ssm):
    records.write(ssm, PROJECT, "stg", make_record(fingerprint=FP_A))
    stored = records.read(ssm, PROJECT, "stg")
    assert records.compare(stored, FP_A) == "current"
    assert records.compare(stored, FP_B) == "pending"
    assert records.compare(records.Record.from_dict(stored), FP_A) == "current"


@pytest.mark.parametrize(
    "value, detail",
    [
        ("not json at all", "not JSON"),
        ('["a list"]', "JSON object"),
        ('{"fingerprint": "abc"}', "'commit' is missing"),
        (make_record().to_json().replace(FP_A, "z" * 64), "'fingerprint' is not 64 lowercase hex"),
        (make_record().to_json().replace("2024-06-01T12:00:00Z", "yesterday"), "'applied_at'"),
    ],
)
def test_malformed_record_names_parameter_and_rewrite_command(aws, ssm, value, detail):
    aws.client("ssm").put_parameter(Name="/acme-api/iam/env/stg", Value=value, Type="String")
    with pytest.raises(RunbookError) as caught:
        records.read(ssm, PROJECT, "stg")
    message = str(caught.value)
    assert "/acme-api/iam/env/stg" in message
    assert "inv iam.env --name stg" in message
    assert detail in message


def test_malformed_account_record_names_account_command(aws, ssm):
    aws.client("ssm").put_parameter(Name="/acme-api/iam/account", Value="{", Type="String")
    with pytest.raises(RunbookError, match="inv iam.account"):
        records.read(ssm, PROJECT, "account")


def test_record_from_another_scope_is_refused(aws, ssm):
    value = make_record(scope="dev").to_json()
    aws.client("ssm").put_parameter(Name="/acme-api/iam/env/stg", Value=value, Type="String")
    with pytest.raises(RunbookError, match="'dev'"):
        records.read(ssm, PROJECT, "stg")
    with pytest.raises(RunbookError, match="scope 'dev'"):
        records.write(ssm, PROJECT, "stg", make_record(scope="dev"))


def test_too_large_record_is_refused_and_nothing_written(aws, ssm):
    roles = [f"acme-api-stg-lambda-role-{i:04d}" for i in range(200)]
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, PROJECT, "stg", make_record(lambda_role_names=roles))
    message = str(caught.value)
    assert "4096" in message and "/acme-api/iam/env/stg" in message
    assert records.read(ssm, PROJECT, "stg") is None


def test_record_just_under_the_limit_is_written(aws, ssm):
    base = len(make_record(lambda_role_names=[""]).to_json())
    record = make_record(lambda_role_names=["x" * (records.MAX_VALUE_BYTES - base)])
    assert len(record.to_json()) == records.MAX_VALUE_BYTES
    records.write(ssm, PROJECT, "stg", record)
    assert records.read(ssm, PROJECT, "stg")["outputs"] == record.outputs


def test_write_accepts_a_dict(aws, ssm):
    records.write(ssm, PROJECT, "stg", make_record().to_dict())
    assert records.read(ssm, PROJECT, "stg")["fingerprint"] == FP_A


def test_write_refuses_a_malformed_dict(aws, ssm):
    bad = {**make_record().to_dict(), "fingerprint": "not-a-hash"}
    with pytest.raises(RunbookError, match="fingerprint"):
        records.write(ssm, PROJECT, "stg", bad)


def test_access_denied_names_parameter_and_permission(aws, ssm):
    client = ssm
    fail_calls(client, "GetParameter", "AccessDeniedException", 1, [])
    with pytest.raises(RunbookError) as caught:
        records.read(client, PROJECT, "stg")
    assert "ssm:GetParameter" in str(caught.value)
    assert "/acme-api/iam/env/stg" in str(caught.value)


def test_throttling_is_retried_with_backoff(aws, ssm, monkeypatch):
    import botocore.endpoint

    sleeps = []
    monkeypatch.setattr(botocore.endpoint.time, "sleep", sleeps.append)
    records.write(ssm, PROJECT, "stg", make_record())
    client = ssm
    calls = []
    fail_calls(client, "GetParameter", "ThrottlingException", 2, calls)
    assert records.read(client, PROJECT, "stg")["fingerprint"] == FP_A
    assert len(calls) == 3
    assert len(sleeps) == 2


def test_persistent_throttling_ends_in_runbook_error(aws, ssm, monkeypatch):
    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)
    client = ssm
    calls = []
    fail_calls(client, "GetParameter", "ThrottlingException", 100, calls)
    with pytest.raises(RunbookError, match="ThrottlingException"):
        records.read(client, PROJECT, "stg")
    assert len(calls) == 3  # aws.client: 2 retries after the first attempt


def test_expired_credentials_say_how_to_log_in(aws, ssm):
    client = ssm
    fail_calls(client, "PutParameter", "ExpiredTokenException", 1, [])
    with pytest.raises(RunbookError, match="aws sso login"):
        records.write(client, PROJECT, "stg", make_record())


def test_record_create_stamps_utc_time_and_version():
    record = records.Record.create(
        fingerprint=FP_A, commit="c" * 40, branch="staging", applied_by=ARN, scope="stg",
        now=datetime(2024, 6, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    assert record.applied_at == "2024-06-01T12:00:00Z"
    assert record.tool_version == runbook.__version__
    assert records.Record.from_json(record.to_json()) == record


def test_importing_records_does_not_import_boto3():
    code = "import sys, runbook.records; print('boto3' in sys.modules or 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(runbook.__file__).parent.parent))
    assert out.stdout.strip() == "False"


def test_round_trip_through_local_endpoint_url(moto_reset, aws_credentials):
    session = boto3.Session(region_name="eu-west-1")
    client = runbook_client(moto_reset)
    records.write(client, PROJECT, "account", make_record(scope="account"), endpoint_url=moto_reset)
    assert records.read(client, PROJECT, "account", endpoint_url=moto_reset)["fingerprint"] == FP_A
    # The record went to the endpoint, not to an in-process or real AWS.
    direct = session.client("ssm", endpoint_url=moto_reset).get_parameter(Name="/acme-api/iam/account")
    assert json.loads(direct["Parameter"]["Value"])["scope"] == "account"


def test_unreachable_endpoint_is_named(aws_credentials, monkeypatch):
    import socket

    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(RunbookError) as caught:
        records.read(runbook_client(url), PROJECT, "stg", endpoint_url=url)
    assert url in str(caught.value) and "endpoint_url" in str(caught.value)


# -- a record SSM will not take -------------------------------------------------------------------------


def fill_versions(ssm, name: str, count: int = 100, label_version: int = 1, labels=("release-1",)) -> None:
    """Give *name* *count* versions and label one of them, as a team that labels releases would."""
    for i in range(count):
        ssm.put_parameter(Name=name, Value=make_record(fingerprint=f"{i % 10}" * 64).to_json(), Type="String",
                          Overwrite=True)
    ssm.label_parameter_version(Name=name, ParameterVersion=label_version, Labels=list(labels))


def test_moto_reproduces_the_version_limit(aws, ssm):
    """The premise of the next test: SSM (here moto) refuses version 101 while version 1 is labelled."""
    from botocore.exceptions import ClientError

    ssm = aws.client("ssm")
    fill_versions(ssm, "/acme-api/iam/env/stg")
    with pytest.raises(ClientError) as caught:
        ssm.put_parameter(Name="/acme-api/iam/env/stg", Value="x", Type="String", Overwrite=True)
    assert caught.value.response["Error"]["Code"] == "ParameterMaxVersionLimitExceeded"


def test_hundred_versions_with_a_labelled_oldest_names_the_cause_and_the_command(aws, ssm):
    import shlex

    ssm = aws.client("ssm")
    name = "/acme-api/iam/env/stg"
    fill_versions(ssm, name, labels=("release-1", "prod"))
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, PROJECT, "stg", make_record(fingerprint=FP_B), profile="acme admin")
    message = str(caught.value)
    assert "100 versions" in message and "oldest" in message and "label" in message
    assert "ParameterMaxVersionLimitExceeded" in message
    command = (f"aws ssm unlabel-parameter-version --name {name} --parameter-version 1 "
               f"--labels release-1 prod --region eu-west-1 --profile 'acme admin'")
    assert command in message
    assert "inv iam.env --name stg" in message
    assert records.read(ssm, PROJECT, "stg")["fingerprint"] != FP_B  # not written
    # The command, run as printed, is what unblocks the record.
    argv = shlex.split(command)
    labels = argv[argv.index("--labels") + 1:argv.index("--region")]
    ssm.unlabel_parameter_version(Name=argv[argv.index("--name") + 1],
                                  ParameterVersion=int(argv[argv.index("--parameter-version") + 1]), Labels=labels)
    records.write(ssm, PROJECT, "stg", make_record(fingerprint=FP_B))
    assert records.read(ssm, PROJECT, "stg")["fingerprint"] == FP_B


def test_version_limit_names_newer_labelled_versions_that_will_block_next(aws, ssm):
    ssm = aws.client("ssm")
    name = "/acme-api/iam/env/stg"
    fill_versions(ssm, name)
    ssm.label_parameter_version(Name=name, ParameterVersion=7, Labels=["release-7"])
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, PROJECT, "stg", make_record())
    message = str(caught.value)
    assert "--parameter-version 1 --labels release-1" in message
    assert "--parameter-version 7 --labels release-7" in message
    assert message.index("--parameter-version 1 ") < message.index("--parameter-version 7 ")


def test_version_limit_without_history_access_says_how_to_list_labels(aws, ssm):
    ssm = ssm
    fill_versions(aws.client("ssm"), "/acme-api/iam/env/stg")
    fail_calls(ssm, "GetParameterHistory", "AccessDeniedException", 1, [])
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, PROJECT, "stg", make_record())
    message = str(caught.value)
    assert "aws ssm get-parameter-history --name /acme-api/iam/env/stg" in message
    assert "aws ssm unlabel-parameter-version" in message


def test_too_many_updates_is_retried_with_jittered_backoff(aws, ssm, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(records, "_sleep", sleeps.append)
    client = ssm
    calls: list[str] = []
    fail_calls(client, "PutParameter", "TooManyUpdates", 3, calls)
    records.write(client, PROJECT, "stg", make_record(fingerprint=FP_B))
    assert records.read(client, PROJECT, "stg")["fingerprint"] == FP_B
    assert len(calls) == 4 and len(sleeps) == 3
    caps = [min(records.WRITE_BACKOFF_CAP_S, records.WRITE_BACKOFF_BASE_S * 2 ** n) for n in (0, 1, 2)]
    assert all(0 <= slept <= cap for slept, cap in zip(sleeps, caps, strict=True))


def test_persistent_too_many_updates_ends_bounded_with_a_message(moto_reset, aws_credentials, monkeypatch):
    # moto's server, not the in-process mock: there a simulated answer replaces the request instead of
    # being returned beside it, so "nothing written" can be checked.
    sleeps: list[float] = []
    monkeypatch.setattr(records, "_sleep", sleeps.append)
    client = runbook_client(moto_reset)
    calls: list[str] = []
    fail_calls(client, "PutParameter", "TooManyUpdates", 1000, calls)
    with pytest.raises(RunbookError) as caught:
        records.write(client, PROJECT, "stg", make_record())
    assert len(calls) == records.WRITE_ATTEMPTS
    assert sum(sleeps) <= 16
    message = str(caught.value)
    assert "TooManyUpdates" in message and "not written" in message and "inv iam.env --name stg" in message
    assert records.read(client, PROJECT, "stg") is None
