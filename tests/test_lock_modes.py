"""Lock modes and Terraform versions, run as a user runs them: `inv` in a subprocess, moto, real git, and the
Terraform each story names (``terraform_release`` marker: the pinned 1.0.3 or 1.11.4).

``terraform.backend.lock: s3`` locks the state with the S3 object ``<key>.tflock`` (Terraform 1.10+,
``use_lockfile``): no DynamoDB table is created or required, a lock file left by another run is reported
with who, since when and the unlock command, and ``inv iam.unlock`` deletes it only while it is that lock
(``dynamodb+s3``, the migration mode: both locks). A Terraform too old for the lock mode, or older than the
one that wrote the state, is refused before anything changes: the backend and the state are looked up
before the plan, so "before the plan".
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests import runs
from tests.project import base_config
from tests.runs import BUCKET, STG_KEY, assert_refused

LOCK_FILE = f"{STG_KEY}.tflock"
LOCK_ID = "9a8b7c6d-1111-4222-8333-944455556666"


def tables(endpoint: str) -> list[str]:
    return runs.client(endpoint, "dynamodb").list_tables()["TableNames"]


def backend_of(endpoint: str, lock: str):
    """The runbook's own Account and Backend of stg's state at *endpoint*, locked in mode *lock*."""
    from runbook.config import Account, Backend

    return (Account(name="nonprod", id="123456789012", region=runs.REGION, endpoint_url=endpoint),
            Backend(bucket=BUCKET, key=STG_KEY, lock_table=runs.TABLE, region=runs.REGION, endpoint_url=endpoint,
                    lock=lock))


@pytest.mark.terraform
@pytest.mark.terraform_release("1.11", "s3")
def test_s3_lock_mode_creates_no_table_and_leaves_no_lock_behind(project, moto_reset):
    dry = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert dry.code == 0 and f"S3 lock file s3://{BUCKET}/{LOCK_FILE}" in dry.all, dry.all
    first = project.inv("iam.env", "--name", "stg")  # a first deploy: the runbook creates the backend
    assert first.code == 0, first.all
    assert "Terraform 1.11.4" in first.all and "use_lockfile=true" in first.err
    assert tables(moto_reset) == [], "lock: s3 must not create a lock table"
    assert STG_KEY in runs.keys(moto_reset) and LOCK_FILE not in runs.keys(moto_reset)
    assert runs.record(moto_reset) is not None


@pytest.mark.terraform_release("1.11", "s3")
def test_bootstrap_in_s3_lock_mode_creates_the_bucket_and_no_table(project, moto_reset):
    looked = project.inv("iam.bootstrap", "--env", "stg", "--dry-run")
    assert looked.code == 0, looked.all
    assert "the bucket must be created" in looked.out and "DynamoDB" not in looked.out, looked.out
    assert runs.client(moto_reset, "s3").list_buckets()["Buckets"] == []
    made = project.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert made.code == 0, made.all
    assert f"lock file s3://{BUCKET}/" in made.out, made.out
    assert tables(moto_reset) == []
    again = project.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert again.code == 0 and "Nothing to do" in again.out, again.all


@pytest.mark.terraform
@pytest.mark.terraform_release("1.11", "s3")
def test_a_lock_file_left_by_another_run_says_who_and_is_released_only_while_it_is_that_lock(project, moto_reset):
    runs.make_backend(moto_reset, table=False)
    info = runs.lock_info(LOCK_ID, who="bob@laptop-9", version="1.11.4")
    runs.client(moto_reset, "s3").put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps(info).encode())

    locked = project.inv("iam.env", "--name", "stg")
    assert locked.code == 75, locked.all
    assert_refused(locked, "locked by another run", "bob@laptop-9", "2026-11-30", LOCK_ID, "nothing was applied",
                   f"inv iam.unlock --env stg --lock-id {LOCK_ID}")
    assert runs.parameters(moto_reset) == [] and STG_KEY not in runs.keys(moto_reset)

    other = project.inv("iam.unlock", "--env", "stg", "--lock-id", "0000-not-this-one", "--yes")
    assert_refused(other, f"has ID '{LOCK_ID}'", "nothing was released")
    looked = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID, "--yes", "--dry-run")
    assert looked.code == 0 and f"lock file s3://{BUCKET}/{LOCK_FILE}" in looked.out, looked.all
    assert LOCK_FILE in runs.keys(moto_reset)

    released = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID, "--yes")
    assert released.code == 0, released.all
    assert "bob@laptop-9" in released.out and f"Released lock {LOCK_ID}" in released.out
    assert LOCK_FILE not in runs.keys(moto_reset)


def test_unlock_refuses_a_lock_file_that_changed_after_it_was_read(moto_reset, aws_credentials):
    from runbook import aws, backend
    from runbook.errors import RunbookError

    account, lock_file = backend_of(moto_reset, "s3")
    runs.make_backend(moto_reset, table=False)
    s3 = runs.client(moto_reset, "s3")
    s3.put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps({"ID": LOCK_ID, "Who": "bob@laptop-9"}).encode())
    session = aws.session(account)
    held = backend.read_lock(session, account, lock_file)
    assert held is not None and held.id == LOCK_ID and held.who == "bob@laptop-9" and held.etag
    s3.put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=json.dumps({"ID": LOCK_ID, "Who": "carol@ci"}).encode())
    with pytest.raises(RunbookError, match="changed while you confirmed") as refused:
        backend.release_lock(session, account, lock_file, held)
    assert refused.value.id == "unlock-refused"
    assert LOCK_FILE in runs.keys(moto_reset), "a lock taken again must never be released"


def test_in_migration_mode_unlock_releases_the_lock_file_and_the_table_item(moto_reset, aws_credentials):
    from runbook import aws, backend
    from runbook.errors import RunbookError

    account, both = backend_of(moto_reset, "dynamodb+s3")
    runs.make_backend(moto_reset)
    info = json.dumps({"ID": LOCK_ID, "Who": "bob@laptop-9", "Created": "2026-11-30T08:01:02Z"})
    runs.client(moto_reset, "s3").put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=info.encode())
    runs.client(moto_reset, "dynamodb").put_item(TableName=runs.TABLE, Item={
        "LockID": {"S": f"{BUCKET}/{STG_KEY}"}, "Info": {"S": info}})
    session = aws.session(account)
    held = backend.read_lock(session, account, both)
    assert held is not None and held.id == LOCK_ID and held.etag
    backend.release_lock(session, account, both, held)
    assert LOCK_FILE not in runs.keys(moto_reset)
    assert runs.held_locks(moto_reset) == []
    assert backend.read_lock(session, account, both) is None
    # two locks, one per place (a run in each lock mode): refused before anything is released
    runs.client(moto_reset, "s3").put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=info.encode())
    runs.client(moto_reset, "dynamodb").put_item(TableName=runs.TABLE, Item={
        "LockID": {"S": f"{BUCKET}/{STG_KEY}"}, "Info": {"S": json.dumps({"ID": "other-run", "Who": "carol@ci"})}})
    with pytest.raises(RunbookError, match=f"holds lock {LOCK_ID} and the lock table lock other-run") as two:
        backend.read_lock(session, account, both)
    assert two.value.id == "unlock-refused" and LOCK_FILE in runs.keys(moto_reset)


@pytest.mark.terraform
@pytest.mark.terraform_release("1.0", "s3")
def test_s3_lock_mode_refuses_terraform_before_1_10_before_anything_changes(project, moto_reset):
    result = project.inv("iam.env", "--name", "stg")
    assert_refused(result, "Terraform 1.0.3", "S3 lock file", "needs Terraform 1.10.0 or later",
                   "terraform.backend.lock", "nothing was changed")
    assert runs.client(moto_reset, "s3").list_buckets()["Buckets"] == [] and tables(moto_reset) == []


@pytest.mark.terraform
@pytest.mark.terraform_release("1.11", "dynamodb")
def test_state_written_by_a_newer_terraform_is_refused_before_the_plan_naming_both_versions(project, moto_reset):
    runs.make_backend(moto_reset)
    assert project.inv("iam.env", "--name", "stg").code == 0  # an administrator with Terraform 1.11.4
    assert runs.state(moto_reset)["terraform_version"] == "1.11.4"
    s3 = runs.client(moto_reset, "s3")
    before, applied = s3.get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"], runs.record(moto_reset)
    # another administrator with the pinned 1.0.3 first on PATH (this one's 1.11.4 is the first PATH entry)
    older = {**project.env, "PATH": os.pathsep.join(project.env["PATH"].split(os.pathsep)[1:])}
    result = project.inv("iam.env", "--name", "stg", env=older)
    assert_refused(result, "last written by Terraform 1.11.4", "Terraform 1.0.3", "install Terraform 1.11.4",
                   "nothing was planned or applied")
    assert "Terraform: plan" not in result.out and "deploy-app.sh" not in result.err, "Terraform ran"
    assert s3.get_object(Bucket=BUCKET, Key=STG_KEY)["ETag"] == before
    assert runs.record(moto_reset) == applied


def test_lock_s3_with_a_required_version_before_1_10_is_a_configuration_error(tmp_path):
    from runbook import config as configuration
    from runbook.errors import RunbookError

    config = base_config(None)
    config["terraform"]["required_version"] = "~> 1.0.0"
    config["terraform"]["backend"] = {"lock": "s3"}
    path = tmp_path / "environments.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(RunbookError, match=r"terraform\.backend\.lock: lock s3 .* needs Terraform 1\.10\.0"):
        configuration.load(path)
    config["terraform"]["backend"] = {"lock": "sqlite"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(RunbookError, match="terraform.backend.lock"):
        configuration.load(path)


@pytest.mark.terraform_release("1.11", "dynamodb+s3")
def test_in_migration_mode_the_unlock_dry_run_names_both_places_it_would_release(project, moto_reset):
    runs.make_backend(moto_reset)
    info = json.dumps(runs.lock_info(LOCK_ID, who="bob@laptop-9", version="1.11.4"))
    runs.client(moto_reset, "s3").put_object(Bucket=BUCKET, Key=LOCK_FILE, Body=info.encode())
    runs.client(moto_reset, "dynamodb").put_item(TableName=runs.TABLE, Item={
        "LockID": {"S": f"{BUCKET}/{STG_KEY}"}, "Info": {"S": info}})
    looked = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID, "--dry-run")
    assert looked.code == 0, looked.all  # it named the lock file only, then released both
    assert f"would delete the lock file s3://{BUCKET}/{LOCK_FILE}" in looked.out
    assert f"and the lock item {BUCKET}/{STG_KEY} of table {runs.TABLE}" in looked.out
