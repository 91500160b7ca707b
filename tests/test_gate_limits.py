"""The gate keeps to its own deadline and says what it waits for once."""

from __future__ import annotations

import json
import time

import pytest

from tests.project import Project, base_config

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


def test_the_waiting_block_is_printed_once_even_at_the_timeout(project):
    result = project.inv("ci.gate", "--env", "stg", "--timeout-s", "2", "--poll-s", "0.5", "--settle-s", "0")
    assert result.code != 0
    assert result.all.count("Waiting: the IAM for this commit is not applied yet") == 1, result.all
    assert "timed out" in result.err and "inv ci.rerun --env stg" in result.err


def test_the_settle_time_is_within_the_timeout(project, moto_reset, aws_credentials):
    import threading

    import boto3

    iam = boto3.client("iam", endpoint_url=moto_reset, region_name="eu-west-1")
    iam.create_role(RoleName="acme-api-stg-lambda-api", AssumeRolePolicyDocument=TRUST)

    def administrator_applies():  # three seconds into the gate's six
        time.sleep(3)
        project.write_record("account", endpoint=moto_reset)
        project.write_record("environment", endpoint=moto_reset,
                             outputs={"lambda_role_names": ["acme-api-stg-lambda-api"]})

    started = time.monotonic()
    applier = threading.Thread(target=administrator_applies)
    applier.start()
    result = project.inv("ci.gate", "--env", "stg", "--timeout-s", "6", "--poll-s", "0.5", "--settle-s", "5")
    took = time.monotonic() - started
    applier.join()
    assert result.code == 0, result.all
    assert "the rest of --timeout-s" in result.out and "IAM gate open" in result.out
    assert took < 6 + 2.5, took  # the deadline plus start-up, never the deadline plus the settle time


def test_a_settle_time_as_long_as_the_timeout_is_refused(project):
    result = project.inv("ci.gate", "--env", "stg", "--timeout-s", "5", "--settle-s", "10")
    assert result.code != 0 and "Traceback" not in result.all
    assert "--settle-s (10 s) must be smaller than --timeout-s (5 s)" in result.err
