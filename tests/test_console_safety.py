"""What reaches the terminal: secrets masked, ordinary words kept, outside text unable to drive the screen."""

from __future__ import annotations

import json

import pytest

from tests.project import Project, base_config


def test_short_placeholder_secret_does_not_hide_ordinary_words(tmp_path, aws_env):
    # moto and LocalStack are commonly used with AWS_SECRET_ACCESS_KEY=test: the environment `test`,
    # its branch and the workflow build-test-deploy must still be readable.
    config = base_config(None)
    config["environments"]["test"] = {"branch": "test", "account": "nonprod"}
    env = {**aws_env, "AWS_SECRET_ACCESS_KEY": "test"}
    project = Project.create(tmp_path, env, config, branch="test")
    result = project.inv("iam.env", "--name", "test", "--dry-run")
    assert result.code == 0, result.all
    assert "environment test" in result.out
    assert "acme-api/iam/env/test.tfstate" in result.out
    assert "****" not in result.out.replace("AWS_SECRET_ACCESS_KEY=****", "")


def test_real_length_secret_is_still_masked(monkeypatch):
    from runbook import console

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert console.mask(f"key={secret} in test") == "key=**** in test"


@pytest.mark.parametrize("raw, shown", [
    ("plain text", "plain text"),
    ("tab\tand\nnew line", "tab\tand\nnew line"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
    ("cursor\rback", "cursor\\x0dback"),
    ("admin\u202eevil", "admin\\u202eevil"),
])
def test_safe_shows_control_characters_as_escapes(raw, shown):
    from runbook import console

    assert console.safe(raw) == shown


def test_status_prints_escape_sequences_from_a_record_harmlessly(tmp_path, moto_reset, aws_env, aws_credentials):
    import boto3

    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    record = {
        "applied_at": "2026-01-01T00:00:00Z", "applied_by": "arn:aws:iam::123456789012:user/\x1b[2J\x1b[32mok",
        "branch": "staging", "commit": "a" * 40, "fingerprint": "0" * 64, "outputs": {}, "scope": "stg",
        "tool_version": "0.1.0",
    }
    ssm = boto3.client("ssm", endpoint_url=moto_reset, region_name="eu-west-1")
    ssm.put_parameter(Name="/acme-api/iam/env/stg", Value=json.dumps(record), Type="String")
    result = project.inv("iam.status")
    assert "\x1b" not in result.out, result.out
    assert "\\x1b[2J" in result.out


def test_scrub_makes_a_ci_log_line_safe(monkeypatch):
    from runbook import console

    monkeypatch.setenv("CIRCLECI_TOKEN", "0123456789abcdef0123456789abcdef01234567")
    line = ("\x1b[31mAccessDenied\x1b[0m for AKIAIOSFODNN7EXAMPLE secret_access_key=wJalrXUtnFEMI/K7MDENG "
            "token 0123456789abcdef0123456789abcdef01234567 \x07bell")
    shown = console.scrub(line)
    assert shown.startswith("AccessDenied for ****")
    assert "secret_access_key=****" in shown
    assert "0123456789abcdef" not in shown and "wJalr" not in shown
    assert "\x07" not in shown and "\\x07bell" in shown
    assert len(console.scrub("x" * 1000)) == 300
