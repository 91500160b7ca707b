"""Terraform runs as the identity that was checked; expired SSO logins say how to log in again.

Run as users run them: `inv iam.env`, `inv ci.gate` in a clone of the project, against moto and
the real Terraform. Two moto IAM users with their own access keys stand for two identities; moto
remembers when and for which service each access key was last used, which shows the identity
Terraform's S3 backend used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import pytest

from tests.project import Project, base_config
from tests.test_iam_tasks import BUCKET, STG_KEY, assert_user_error, record

START_URL = "https://acme.awsapps.example/start"


@pytest.fixture
def aws(moto_reset, aws_credentials):
    """aws("iam") and the like: a boto3 client for moto with the fake credentials."""
    import boto3

    return lambda service: boto3.client(service, endpoint_url=moto_reset, region_name="eu-west-1")


def user_with_key(iam, name: str) -> dict:
    """A moto IAM user and one access key of its own: {"id": ..., "secret": ...}."""
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def last_used(iam, key_id: str) -> str | None:
    """The service that last used *key_id* (moto tracks it per request), or None when never used."""
    used = iam.get_access_key_last_used(AccessKeyId=key_id)["AccessKeyLastUsed"]
    return used.get("ServiceName") if used.get("LastUsedDate") else None


def with_profile(config: dict, profile: str) -> dict:
    config = copy.deepcopy(config)
    for account in config["accounts"].values():
        account["profile"] = profile
    return config


def without_keys(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


# -- profile + exported keys -------------------------------------------------------------------


@pytest.mark.terraform
def test_terraform_uses_the_checked_profile_not_the_exported_keys(tmp_path, moto_reset, aws_env, aws):
    iam = aws("iam")
    admin = user_with_key(iam, "admin")
    other = user_with_key(iam, "other")
    aws_dir = tmp_path / "aws"
    aws_dir.mkdir()
    (aws_dir / "credentials").write_text(
        f"[admin]\naws_access_key_id = {admin['id']}\naws_secret_access_key = {admin['secret']}\n")
    (aws_dir / "config").write_text("[profile admin]\nregion = eu-west-1\n")
    env = {**aws_env, "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
           "AWS_CONFIG_FILE": str(aws_dir / "config"),
           "AWS_ACCESS_KEY_ID": other["id"], "AWS_SECRET_ACCESS_KEY": other["secret"]}
    project = Project.create(tmp_path, env, with_profile(base_config(moto_reset), "admin"))

    result = project.inv("iam.env", "--name", "stg")

    assert result.code == 0, result.all
    # Terraform's S3 backend ran as the checked identity; the exported keys were never used
    assert last_used(iam, other["id"]) is None
    assert last_used(iam, admin["id"]) is not None
    applied = record(aws("ssm"), "/acme-api/iam/env/stg")
    assert applied["applied_by"] == "arn:aws:iam::123456789012:user/admin"
    # both are set: the user is told which one counts
    assert "profile is 'admin' and AWS_ACCESS_KEY_ID is exported" in result.out
    # the handed-over keys are never printed
    for secret in (admin["secret"], other["secret"], admin["id"]):
        assert secret not in result.all


def test_dry_run_shows_where_the_credentials_come_from_without_values(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert "the keys that pass the caller identity check" in result.out, result.all
    assert "AWS_SECRET_ACCESS_KEY=" not in result.out


# -- TF_WORKSPACE ------------------------------------------------------------------------------


@pytest.mark.terraform
def test_tf_workspace_in_the_shell_does_not_move_the_state(tmp_path, moto_reset, aws_env, aws):
    project = Project.create(tmp_path, {**aws_env, "TF_WORKSPACE": "sandbox"}, base_config(moto_reset))
    result = project.inv("iam.env", "--name", "stg")

    assert result.code == 0, result.all
    s3 = aws("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == [STG_KEY]
    assert record(aws("ssm"), "/acme-api/iam/env/stg") is not None


# -- expired SSO logins ------------------------------------------------------------------------


def sso_env(tmp_path, aws_env: dict, *, token: str) -> dict:
    """A shell whose AWS_PROFILE is a legacy SSO profile (sso_start_url); HOME holds its token cache.

    *token*: "none" (never logged in) or "expired" (a cached token past its expiry).
    """
    home = tmp_path / "home"
    (home / ".aws" / "sso" / "cache").mkdir(parents=True)
    config = home / ".aws" / "config"
    config.write_text(
        "[profile legacy]\n"
        f"sso_start_url = {START_URL}\nsso_region = eu-west-1\nsso_account_id = 123456789012\n"
        "sso_role_name = Administrator\nregion = eu-west-1\n"
    )
    if token == "expired":
        name = hashlib.sha1(START_URL.encode()).hexdigest() + ".json"
        (home / ".aws" / "sso" / "cache" / name).write_text(json.dumps({
            "startUrl": START_URL, "region": "eu-west-1", "accessToken": "expired-token",
            "expiresAt": "2020-01-01T00:00:00Z",
        }))
    return {**without_keys(aws_env), "HOME": str(home), "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"), "AWS_PROFILE": "legacy"}


@pytest.mark.parametrize("token", ["none", "expired"])
def test_expired_sso_login_names_the_login_command(tmp_path, moto_reset, aws_env, token):
    env = sso_env(tmp_path, aws_env, token=token)
    project = Project.create(tmp_path, env, base_config(moto_reset))

    result = project.inv("iam.env", "--name", "stg")

    assert_user_error(result, "aws sso login --profile legacy", "SSO login of profile 'legacy'")
    assert "check the network" not in result.all


@pytest.mark.parametrize("token", ["none", "expired"])
def test_expired_sso_login_of_the_configured_profile(tmp_path, moto_reset, aws_env, token):
    env = {**sso_env(tmp_path, aws_env, token=token), "AWS_PROFILE": ""}
    project = Project.create(tmp_path, env, with_profile(base_config(moto_reset), "legacy"))

    result = project.inv("iam.env", "--name", "stg")

    assert_user_error(result, "aws sso login --profile legacy", "accounts.nonprod.profile")
    assert "check the network" not in result.all


@pytest.mark.parametrize("token", ["none", "expired"])
def test_gate_stops_at_once_on_an_expired_sso_login(tmp_path, moto_reset, aws_env, token):
    project = Project.create(tmp_path, sso_env(tmp_path, aws_env, token=token), base_config(moto_reset))

    started = time.monotonic()
    result = project.inv("ci.gate", "--env", "stg", "--timeout-s", "20", "--poll-s", "0.5", "--settle-s", "0")

    assert_user_error(result, "aws sso login --profile legacy")
    assert "timed out" not in result.all
    assert time.monotonic() - started < 15
