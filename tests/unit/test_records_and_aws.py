"""The applied record's format, its SSM read and write, and the one table of AWS errors (botocore stubbed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import runbook
from runbook import aws, records
from runbook.config import Account
from runbook.errors import RunbookError, Transient

ACCOUNT = Account("nonprod", "123456789012", "eu-west-1")
NAME = "/acme-api/iam/env/stg"
TREES = {"iam/terraform/bin": "5" * 40, "iam/terraform/modules": None}


def record(**changes) -> records.Record:
    values = dict(fingerprint="f" * 64, commit="c" * 40, branch="staging", applied_by="arn:aws:iam::1:user/a",
                  scope="stg", trees=TREES, inputs="e" * 64, outputs={"lambda_role_names": ["acme-api-stg-lambda-api"]},
                  now=datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc))
    return records.Record.create(**{**values, **changes})


def test_a_record_names_what_its_fingerprint_was_made_of():
    data = json.loads(record().to_json())
    assert data["format"] == 3 and data["trees"] == TREES and data["inputs"] == "e" * 64
    assert data["applied_at"] == "2026-06-01T12:00:00Z" and data["tool_version"] == runbook.__version__
    assert list(data) == sorted(data)


@pytest.mark.parametrize("change, words", [
    ({"fingerprint": "F" * 64}, "'fingerprint' is not 64 lowercase hex"),
    ({"applied_at": "yesterday"}, "'applied_at' is not UTC ISO-8601"),
    ({"commit": ""}, "'commit' is missing"),
    ({"trees": {"a": 1}}, "'trees' is not an object of tree ids"),
    ({"format": "3"}, "'format' is not a whole number"),
])
def test_a_malformed_record_names_its_field(change, words):
    with pytest.raises(ValueError, match=words):
        records.Record.from_dict({**record().to_dict(), **change})


def test_a_record_of_format_2_is_still_read():
    old = {k: v for k, v in record().to_dict().items() if k not in ("format", "trees", "inputs")}
    assert records.Record.from_dict(old).format == 2


def test_a_record_of_a_newer_format_is_told_apart():
    with pytest.raises(records.NewerFormat):
        records.Record.from_dict({**record().to_dict(), "format": 4, "tool_version": "9.0.0"})


def test_the_size_of_a_record_is_known_before_anything_is_written():
    assert record().size_problem() is None
    big = record(outputs={"lambda_role_names": [f"acme-api-stg-lambda-{i:04d}" for i in range(200)]})
    assert "an SSM Standard parameter holds at most 4096" in big.size_problem()


def test_reading_a_record_never_applied_gives_none(stub):
    ssm, stubber = stub("ssm")
    stubber.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
    assert records.read(ssm, NAME, "stg", ACCOUNT) is None


def test_reading_a_record_round_trips(stub):
    ssm, stubber = stub("ssm")
    stubber.add_response("get_parameter", {"Parameter": {"Name": NAME, "Value": record().to_json()}})
    assert records.read(ssm, NAME, "stg", ACCOUNT)["fingerprint"] == "f" * 64


@pytest.mark.parametrize("value, words", [
    ("{not json", "malformed"), (record(scope="dev").to_json(), "names scope 'dev', not 'stg'"),
    ("[" * 2000 + "]" * 2000, "malformed"),  # fits a Standard parameter, nests deeper than Python's stack
])
def test_an_unreadable_record_names_the_delete_and_the_apply_that_replace_it(stub, value, words):
    ssm, stubber = stub("ssm")
    stubber.add_response("get_parameter", {"Parameter": {"Name": NAME, "Value": value}})
    with pytest.raises(RunbookError) as caught:
        records.read(ssm, NAME, "stg", ACCOUNT)
    assert caught.value.id == "record-malformed" and words in caught.value.message
    assert "aws ssm delete-parameter --name /acme-api/iam/env/stg --region eu-west-1" in caught.value.fix
    assert caught.value.fix.endswith("writes a new one)") and "inv iam.env --name stg" in caught.value.fix


def test_a_record_written_by_a_newer_runbook_is_refused_as_such_not_deleted(stub):
    ssm, stubber = stub("ssm")
    # the version is outside text: it reaches the terminal as one escaped line, never a control character
    newer = json.dumps({**record().to_dict(), "format": 4, "tool_version": "0.9.0\n\x1b[2JERROR [fake]: ok"})
    stubber.add_response("get_parameter", {"Parameter": {"Name": NAME, "Value": newer}})
    with pytest.raises(RunbookError) as caught:
        records.read(ssm, NAME, "stg", ACCOUNT)
    assert caught.value.id == "record-newer" and "runbook '0.9.0\\n\\x1b[2JERROR [fake]: ok'" in caught.value.what
    assert "\n" not in caught.value.what and "\x1b" not in caught.value.what
    assert "delete" not in caught.value.fix


def test_access_denied_names_the_permission_and_keeps_awss_message(stub):
    ssm, stubber = stub("ssm")
    stubber.add_client_error("get_parameter", "AccessDeniedException", "User x is not authorized to perform "
                             "ssm:GetParameter", http_status_code=400)
    with pytest.raises(RunbookError) as caught:
        records.read(ssm, NAME, "stg", ACCOUNT)
    assert caught.value.id == "aws-access-denied" and "not authorized to perform" in caught.value.what
    assert "grant ssm:GetParameter on /acme-api/iam/env/stg" in caught.value.fix


def test_writing_retries_too_many_updates_then_succeeds(stub, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    ssm, stubber = stub("ssm")
    for _ in range(2):
        stubber.add_client_error("put_parameter", "TooManyUpdates", http_status_code=400)
    stubber.add_response("put_parameter", {"Version": 3, "Tier": "Standard"})
    records.write(ssm, NAME, record(), ACCOUNT)


def test_writing_gives_up_on_too_many_updates_with_a_message(stub, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    ssm, stubber = stub("ssm")
    for _ in range(records.WRITE_ATTEMPTS):
        stubber.add_client_error("put_parameter", "TooManyUpdates", http_status_code=400)
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, NAME, record(), ACCOUNT)
    assert caught.value.id == "record-write-contended"


def test_a_write_whose_answer_was_lost_is_read_back(stub):
    ssm, stubber = stub("ssm")
    stubber.add_client_error("put_parameter", "InternalServerError", http_status_code=500)
    stubber.add_response("get_parameter", {"Parameter": {"Name": NAME, "Value": record().to_json()}})
    records.write(ssm, NAME, record(), ACCOUNT)  # SSM had applied it: no error


def test_the_version_limit_names_the_label_to_remove(stub):
    ssm, stubber = stub("ssm")
    stubber.add_client_error("put_parameter", "ParameterMaxVersionLimitExceeded", http_status_code=400)
    stubber.add_response("get_parameter_history", {"Parameters": [
        {"Name": NAME, "Version": 7, "Labels": ["golden"]}, {"Name": NAME, "Version": 2, "Labels": ["old", "x"]}]},
        {"Name": NAME, "MaxResults": 50})
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, NAME, record(), ACCOUNT)
    assert caught.value.id == "record-version-limit" and "version 2 has the label(s) old, x" in caught.value.what
    assert caught.value.fix.startswith("aws ssm unlabel-parameter-version --name /acme-api/iam/env/stg "
                                       "--parameter-version 2 --labels old x --region eu-west-1")


def test_a_too_large_record_is_refused_before_any_call(stub):
    ssm, _ = stub("ssm")
    big = record(outputs={"lambda_role_names": ["x" * 60] * 80})
    with pytest.raises(RunbookError) as caught:
        records.write(ssm, NAME, big, ACCOUNT)
    assert caught.value.id == "record-too-large"


@pytest.mark.parametrize("code, status, expected", [
    ("AccessDenied", 403, "aws-access-denied"), ("ExpiredToken", 400, "aws-credentials-rejected"),
    ("ThrottlingException", 400, "aws-unreachable"), ("InternalError", 500, "aws-unreachable"),
    ("ValidationException", 400, "aws-error"),
])
def test_the_one_table_of_aws_errors(code, status, expected):
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": code, "Message": "AWS says why"}, "ResponseMetadata":
                       {"HTTPStatusCode": status}}, "GetParameter")
    error = aws.failure(exc, "reading the applied record", NAME, ACCOUNT)
    assert error.id == expected and "AWS says why" in error.what
    assert isinstance(error, Transient) is (expected == "aws-unreachable")


def test_an_endpoint_that_is_not_aws_is_named_so():
    from botocore.parsers import ResponseParserError

    error = aws.failure(ResponseParserError("<html>"), "STS GetCallerIdentity", "account nonprod",
                        Account("nonprod", "1" * 12, "eu-west-1", endpoint_url="http://127.0.0.1:8080"))
    assert error.id == "not-an-aws-endpoint" and "http://127.0.0.1:8080" in error.what


def test_an_expired_sso_login_names_the_profile_to_log_in_with():
    from botocore.exceptions import SSOTokenLoadError

    error = aws.failure(SSOTokenLoadError(error_msg="x"), "resolving the credentials", "account prod",
                        Account("prod", "2" * 12, "eu-west-1", profile="acme-prod"))
    assert error.id == "aws-sso-expired" and error.fix.startswith("aws sso login --profile acme-prod")


def test_aws_commands_carry_the_accounts_region_profile_and_endpoint():
    account = Account("prod", "2" * 12, "eu-west-1", profile="acme prod", endpoint_url="http://127.0.0.1:5000")
    assert aws.aws_command(account, "s3", "ls") == ("aws s3 ls --region eu-west-1 --profile 'acme prod' "
                                                    "--endpoint-url http://127.0.0.1:5000")


def test_frozen_credentials_never_show_in_their_repr():
    assert "secret" not in repr(aws.Credentials("AKIAEXAMPLE", "secret", "token"))


def test_every_session_reads_botocore_data_through_one_loader():
    # the benchmarks' reason for it (bench_overhead, bench_status); it leans on boto3's Session._session
    from runbook import aws

    first = aws.session(ACCOUNT, use_profile=False)
    second = aws.session(ACCOUNT, credentials=aws.Credentials("AKIA", "secret"))
    assert first is not second
    assert first._session.get_component("data_loader") is second._session.get_component("data_loader")


def test_an_account_whose_credentials_fail_is_asked_once_not_once_per_scope(cfg, monkeypatch):
    # each look-up once: the account scope and the environments of one account share its caller identity check
    from runbook.scopes import all_scopes
    from tests.unit.conftest import TREES as ALL_TREES

    asked = []

    def rejected(sess, account):
        asked.append(account.name)
        raise RunbookError("AWS rejected the credentials during STS GetCallerIdentity", id="aws-credentials-rejected")

    monkeypatch.setattr(records.aws, "caller_identity", rejected)
    statuses = records.examine(all_scopes(cfg), trees=ALL_TREES, session_for=lambda account: None)
    assert {st.state for st in statuses} == {records.UNKNOWN} and len(statuses) == 5
    assert all("rejected the credentials" in st.reason for st in statuses)
    assert sorted(asked) == ["nonprod", "prod"]
