"""Lock modes and Terraform versions, run as a user runs them: `inv` in a subprocess, moto, real git, and
the Terraform each test names (``terraform_release`` marker: the pinned 1.0.3 or 1.11.4).

``terraform.backend.lock: s3`` locks the state with the S3 object ``<key>.tflock`` (Terraform 1.10+,
``use_lockfile``): no DynamoDB table is created or required, a lock file left by another run is reported
with who, since when and the unlock command, and ``inv iam.unlock`` deletes it only while it is that lock.
A Terraform too old for the lock mode, or older than the one that wrote the state, is refused before
anything changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.project import Project, base_config
from tests.test_signals_and_locks import BUCKET, STG_KEY, assert_user_error, aws

pytestmark = pytest.mark.terraform

LOCK_FILE = f"{STG_KEY}.tflock"
LOCK_ID = "9a8b7c6d-1111-4222-8333-944455556666"


def keys(endpoint: str) -> list[str]:
    return sorted(o["Key"] for o in aws(endpoint, "s3").list_objects_v2(Bucket=BUCKET).get("Contents", []))


def tables(endpoint: str) -> list[str]:
    return aws(endpoint, "dynamodb").list_tables()["TableNames"]


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


@pytest.mark.terraform_release("1.11", "s3")
def test_s3_lock_mode_creates_no_table_and_leaves_no_lock_behind(project, moto_reset):
    first = project.inv("iam.env", "--name", "stg")
    assert first.code == 0, first.all
    assert "Terraform 1.11.4" in first.all
    assert tables(moto_reset) == [], "lock: s3 must not create a lock table"
    assert STG_KEY in keys(moto_reset) and LOCK_FILE not in keys(moto_reset)
    again = project.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    dry = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert dry.code == 0 and f"S3 lock file s3://{BUCKET}/{LOCK_FILE}" in dry.all, dry.all


@pytest.mark.terraform_release("1.11", "s3")
def test_bootstrap_in_s3_lock_mode_creates_the_bucket_and_no_table(project, moto_reset):
    looked = project.inv("iam.bootstrap", "--env", "stg", "--dry-run")
    assert looked.code == 0, looked.all
    assert f"create S3 bucket {BUCKET}" in looked.out and "DynamoDB" not in looked.out, looked.out
    made = project.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert made.code == 0, made.all
    assert f"lock file s3://{BUCKET}/" in made.out, made.out
    assert tables(moto_reset) == []
    again = project.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert again.code == 0 and "Nothing to do" in again.out, again.all


@pytest.mark.terraform_release("1.11", "s3")
def test_a_lock_file_left_by_another_run_says_who_and_is_released_only_while_it_is_that_lock(project, moto_reset):
    assert project.inv("iam.env", "--name", "stg").code == 0
    info = {"ID": LOCK_ID, "Operation": "OperationTypeApply", "Info": "", "Who": "bob@laptop-9",
            "Version": "1.11.4", "Created": "2026-11-30T08:01:02.345678Z", "Path": f"{BUCKET}/{STG_KEY}"}
    aws(moto_reset, "s3").put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps(info).encode())

    locked = project.inv("iam.env", "--name", "stg")
    assert locked.code == 75, locked.all
    assert_user_error(locked, "locked by another run", "bob@laptop-9", "2026-11-30", LOCK_ID, "nothing was applied",
                      f"inv iam.unlock --env stg --lock-id {LOCK_ID}")

    other = project.inv("iam.unlock", "--env", "stg", "--lock-id", "0000-not-this-one", "--yes")
    assert_user_error(other, f"has ID '{LOCK_ID}'", "nothing was released")
    looked = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID, "--yes", "--dry-run")
    assert looked.code == 0 and f"lock file s3://{BUCKET}/{LOCK_FILE}" in looked.out, looked.all
    assert LOCK_FILE in keys(moto_reset)

    released = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID, "--yes")
    assert released.code == 0, released.all
    assert "bob@laptop-9" in released.out and f"Released lock {LOCK_ID}" in released.out
    assert LOCK_FILE not in keys(moto_reset)
    assert project.inv("iam.env", "--name", "stg").code == 0


@pytest.mark.terraform_release("1.11", "s3")
def test_unlock_refuses_a_lock_file_that_changed_after_it_was_read(project, moto_reset, aws_credentials):
    from runbook import aws as runbook_aws
    from runbook import config as configuration
    from runbook import statelock
    from runbook.errors import RunbookError
    from runbook.scopes import Scope

    cfg = configuration.load(project.path / "config" / "environments.yml")
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    s3 = aws(moto_reset, "s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps({"ID": LOCK_ID, "Who": "bob@laptop-9"}).encode())
    session = runbook_aws.session(scope.account)
    held = statelock.read_lock(session, scope.account, scope.backend)
    assert held is not None and held.id == LOCK_ID and held.who == "bob@laptop-9"
    s3.put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps({"ID": LOCK_ID, "Who": "carol@ci"}).encode())
    with pytest.raises(RunbookError, match="changed while you confirmed"):
        statelock.release_lock(session, scope.account, scope.backend, held)
    assert LOCK_FILE in keys(moto_reset), "a lock taken again must never be released"


@pytest.mark.terraform_release("1.0", "s3")
def test_s3_lock_mode_refuses_terraform_before_1_10_before_anything_changes(project, moto_reset):
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, "Terraform 1.0.3", "S3 lock file", "needs Terraform 1.10.0 or later",
                      "terraform.backend.lock", "nothing was changed")
    assert aws(moto_reset, "s3").list_buckets()["Buckets"] == [] and tables(moto_reset) == []


@pytest.mark.terraform_release("1.11", "dynamodb")
def test_state_written_by_a_newer_terraform_is_refused_naming_both_versions(project, moto_reset, tmp_path):
    assert project.inv("iam.env", "--name", "stg").code == 0
    state = json.loads(aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    assert state["terraform_version"] == "1.11.4"
    before = aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"]
    # another administrator, on another machine (no cache of this one), with the pinned 1.0.3 first on PATH
    older = {**project.env, "PATH": os.pathsep.join(project.env["PATH"].split(os.pathsep)[1:]),
             "XDG_CACHE_HOME": str(tmp_path / "other-machine")}
    result = project.inv("iam.env", "--name", "stg", env=older)
    assert_user_error(result, "last written by Terraform 1.11.4", "Terraform 1.0.3", "install Terraform 1.11.4",
                      "nothing was planned or applied")
    assert "Terraform: plan" not in result.out
    assert aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"] == before


@pytest.mark.terraform_release("1.11", "dynamodb")
def test_state_written_by_a_newer_terraform_is_refused_before_the_apply_where_the_look_up_overlaps_the_plan(
        project, moto_reset, aws_env):
    """On a machine that verified the backend before, the look-up runs while Terraform plans: the same
    refusal comes before any apply, in place of whatever Terraform said."""
    older = {**project.env, "PATH": os.pathsep.join(project.env["PATH"].split(os.pathsep)[1:])}
    assert project.inv("iam.env", "--name", "stg", env=older).code == 0  # seen by this machine, with 1.0.3
    path = project.path / "roots" / "environment" / "main.tf"
    path.write_text(path.read_text() + "\n# a change\n")
    from tests.project import git

    git(project.path, "commit", "-q", "-am", "change")
    git(project.path, "push", "-q")
    assert project.inv("iam.env", "--name", "stg").code == 0  # another administrator, with 1.11.4
    before = aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"]
    result = project.inv("iam.env", "--name", "stg", env=older)
    assert_user_error(result, "last written by Terraform 1.11.4", "install Terraform 1.11.4", "nothing was applied")
    assert "Terraform: apply" not in result.out
    assert aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"] == before


def test_lock_s3_with_a_required_version_before_1_10_is_a_configuration_error(tmp_path: Path):
    from runbook import config as configuration
    from runbook.errors import RunbookError

    config = base_config(None)
    config["terraform"]["required_version"] = "~> 1.0.0"
    config["terraform"]["backend"] = {"lock": "s3"}
    path = tmp_path / "environments.yml"
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(RunbookError, match=r"terraform\.backend\.lock: lock s3 .* needs Terraform 1\.10\.0"):
        configuration.load(path)
    config["terraform"]["backend"] = {"lock": "sqlite"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(RunbookError, match="terraform.backend.lock"):
        configuration.load(path)


def test_in_migration_mode_unlock_releases_the_lock_file_and_the_table_item(tf_backend, aws_credentials):
    from runbook import aws as runbook_aws
    from runbook import statelock
    from runbook.config import Account, Backend

    account = Account(name="nonprod", id="123456789012", region=tf_backend.region, endpoint_url=tf_backend.endpoint)
    backend = Backend(bucket=tf_backend.bucket, key=STG_KEY, lock_table=tf_backend.lock_table,
                      region=tf_backend.region, endpoint_url=tf_backend.endpoint, lock="dynamodb+s3")
    info = json.dumps({"ID": LOCK_ID, "Who": "bob@laptop-9", "Created": "2026-11-30T08:01:02Z"})
    tf_backend.client("s3").put_object(Bucket=tf_backend.bucket, Key=LOCK_FILE, Body=info.encode())
    tf_backend.client("dynamodb").put_item(TableName=tf_backend.lock_table, Item={
        "LockID": {"S": f"{tf_backend.bucket}/{STG_KEY}"}, "Info": {"S": info}})
    session = runbook_aws.session(account)
    held = statelock.read_lock(session, account, backend)
    assert held is not None and held.id == LOCK_ID and held.etag
    statelock.release_lock(session, account, backend, held)
    assert LOCK_FILE not in keys(tf_backend.endpoint)
    assert f"{tf_backend.bucket}/{STG_KEY}" not in tf_backend.lock_items()
    assert statelock.read_lock(session, account, backend) is None
