"""The apply goes to the configured state, and nowhere else: the Terraform backend verified on every run,
created only on a true first deploy (otherwise `inv iam.bootstrap`), and the state object checked against the
applied record before the plan. Run as a user runs them: moto, real Terraform, real git. The decisions are in
tests/unit/test_decide.py; these stories prove that the look-ups find what AWS holds."""

from __future__ import annotations

import threading

import pytest

from tests.project import ACCOUNT_ID, Project, base_config
from tests.test_iam_stories import BUCKET, STG_KEY, STG_RECORD, TABLE, assert_user_error, buckets, record


def state_keys(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def delete_state_bucket(s3) -> None:
    """Delete the versioned state bucket the way an operator must: every version first."""
    versions = s3.list_object_versions(Bucket=BUCKET)
    for item in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"], VersionId=item["VersionId"])
    s3.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def applied(project, aws) -> Project:
    """The project after a successful `inv iam.env --name stg` (backend created, state and record written)."""
    first = project.inv("iam.env", "--name", "stg")
    assert first.code == 0, first.all
    return project


@pytest.mark.terraform
def test_a_state_object_that_has_gone_is_refused_before_the_plan_with_the_way_back(applied, aws):
    s3 = aws("s3")
    s3.delete_object(Bucket=BUCKET, Key=STG_KEY)  # versioned: a delete marker hides the last version
    before = record(aws, STG_RECORD)
    result = applied.inv("iam.env", "--name", "stg")
    marker = next(m for m in s3.list_object_versions(Bucket=BUCKET, Prefix=STG_KEY)["DeleteMarkers"] if m["IsLatest"])
    assert_user_error(result, f"s3://{BUCKET}/{STG_KEY} does not exist", "nothing was planned or applied",
                      f"aws s3api delete-object --bucket {BUCKET} --key {STG_KEY} --version-id {marker['VersionId']}")
    assert "Terraform: plan" not in result.out and record(aws, STG_RECORD) == before
    s3.delete_object(Bucket=BUCKET, Key=STG_KEY, VersionId=marker["VersionId"])  # the command in the message
    restored = applied.inv("iam.env", "--name", "stg")
    assert restored.code == 0, restored.all
    assert "0 to add, 0 to change, 0 to destroy" in restored.out

    config = base_config(s3.meta.endpoint_url)  # the key changed in the configuration: the state is elsewhere
    config["terraform"]["backend"] = {"environment_state_key": "{project}/iam/environments/{environment}.tfstate"}
    applied.commit_config(config)
    new_key = "acme-api/iam/environments/stg.tfstate"
    moved = applied.inv("iam.env", "--name", "stg")
    assert_user_error(moved, "Environment stg has an applied record", f"s3://{BUCKET}/{new_key} does not exist",
                      f"aws s3 cp s3://{BUCKET}/{STG_KEY} s3://{BUCKET}/{new_key}", "terraform.backend")
    assert new_key not in state_keys(s3)
    s3.copy_object(Bucket=BUCKET, Key=new_key, CopySource={"Bucket": BUCKET, "Key": STG_KEY})
    again = applied.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert "0 to add, 0 to change, 0 to destroy" in again.out


@pytest.mark.terraform
def test_a_backend_that_has_gone_is_not_recreated_and_bootstrap_brings_it_back(applied, aws):
    s3, ddb = aws("s3"), aws("dynamodb")
    delete_state_bucket(s3)
    before = record(aws, STG_RECORD)
    gone = applied.inv("iam.env", "--name", "stg")
    assert_user_error(gone, f"S3 bucket {BUCKET}", "NOT a first deploy", "environment stg has an applied record",
                      "state digest", "inv iam.bootstrap --env stg --dry-run")
    assert "Terraform: plan" not in gone.out and BUCKET not in buckets(aws)
    assert f"{BUCKET}/{STG_KEY}-md5" in [i["LockID"]["S"] for i in ddb.scan(TableName=TABLE)["Items"]]
    assert record(aws, STG_RECORD) == before

    dry = applied.inv("iam.bootstrap", "--env", "stg", "--dry-run")
    assert dry.code == 0, dry.all
    assert "the bucket must be created" in dry.out and "remove 1 state digest(s)" in dry.out
    assert "NOT a first deploy" in dry.out and "Dry run: nothing was changed" in dry.out
    assert_user_error(applied.inv("iam.bootstrap", "--env", "stg"), "no terminal to ask", "--yes")
    assert BUCKET not in buckets(aws)
    done = applied.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert done.code == 0, done.all
    assert "Removed 1 state digest(s)" in done.out
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert not [i for i in ddb.scan(TableName=TABLE)["Items"] if i["LockID"]["S"].endswith("-md5")]
    after = applied.inv("iam.env", "--name", "stg")  # the state itself is gone: refused until restored
    assert_user_error(after, "has an applied record", "does not exist", f"aws ssm delete-parameter --name {STG_RECORD}")
    nothing = applied.inv("iam.bootstrap", "--env", "stg")
    assert nothing.code == 0 and "Nothing to do" in nothing.out, nothing.all


@pytest.mark.terraform
def test_a_mistyped_bucket_or_a_deleted_lock_table_is_no_first_deploy(applied, aws):
    aws("dynamodb").delete_table(TableName=TABLE)
    table = applied.inv("iam.env", "--name", "stg")
    assert_user_error(table, f"DynamoDB lock table {TABLE}", "NOT a first deploy", "holds state objects",
                      "inv iam.bootstrap --env stg")
    assert TABLE not in aws("dynamodb").list_tables()["TableNames"]
    assert applied.inv("iam.bootstrap", "--env", "stg", "--yes").code == 0
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["backend"] = {"state_bucket": "{project}-tfstaet-{account_id}"}
    applied.commit_config(config)
    aws("dynamodb").put_item(TableName=TABLE, Item={"LockID": {"S": f"{BUCKET}/{STG_KEY}-md5"},
                                                    "Digest": {"S": "0" * 32}})
    typo = applied.inv("iam.env", "--name", "stg")
    assert_user_error(typo, f"acme-api-tfstaet-{ACCOUNT_ID}", "NOT a first deploy",
                      f"the lock table knows state in {BUCKET}", "set it back")
    assert f"acme-api-tfstaet-{ACCOUNT_ID}" not in buckets(aws)


@pytest.mark.terraform
def test_a_deleted_lock_table_and_state_object_are_no_first_deploy_not_an_aws_failure(applied, aws):
    # with no delete marker to restore, the way back to the state looks for digests in the lock table: a table that
    # is gone holds none (it was an AWS failure that hid the findings)
    s3 = aws("s3")
    aws("dynamodb").delete_table(TableName=TABLE)
    for version in s3.list_object_versions(Bucket=BUCKET, Prefix=STG_KEY).get("Versions", []):
        s3.delete_object(Bucket=BUCKET, Key=STG_KEY, VersionId=version["VersionId"])
    both = applied.inv("iam.env", "--name", "stg")
    assert_user_error(both, f"DynamoDB lock table {TABLE}", "NOT a first deploy", "environment stg has an applied "
                      "record")
    assert "ResourceNotFoundException" not in both.all and TABLE not in aws("dynamodb").list_tables()["TableNames"]


def test_bootstrap_in_an_empty_account_twice_at_once(project, aws):
    results = {}

    def run(n):
        results[n] = project.inv("iam.bootstrap", "--env", "stg", "--yes")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results.values():
        assert result.code == 0, result.all
        assert "NOT a first deploy" not in result.out
    assert BUCKET in buckets(aws)
    assert aws("dynamodb").describe_table(TableName=TABLE)["Table"]["KeySchema"] == [
        {"AttributeName": "LockID", "KeyType": "HASH"}]


@pytest.mark.terraform
def test_a_half_configured_bucket_is_repaired_before_the_plan(applied, aws):
    s3 = aws("s3")
    s3.delete_bucket_encryption(Bucket=BUCKET)
    s3.delete_public_access_block(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    result = applied.inv("iam.env", "--name", "stg")
    assert result.code == 0, result.all
    assert "lacked versioning, default encryption, public access block: repaired" in result.out
    assert result.out.index("repaired") < result.out.index("Terraform: plan")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())


def test_a_bucket_the_caller_may_not_repair_is_refused_with_the_commands(project, aws, monkeypatch):
    from moto import settings

    s3, iam = aws("s3"), aws("iam")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    aws("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
                                 BillingMode="PAY_PER_REQUEST")
    iam.create_user(UserName="operator")
    iam.put_user_policy(UserName="operator", PolicyName="all-but-versioning", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"},'
        ' {"Effect": "Deny", "Action": "s3:PutBucketVersioning", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="operator")["AccessKey"]
    env = {**project.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    result = project.inv("iam.env", "--name", "stg", env=env)
    monkeypatch.undo()
    assert_user_error(result, f"The state bucket {BUCKET} lacks versioning", "AccessDenied",
                      "repaired: default encryption, public access block",
                      f"aws s3api put-bucket-versioning --bucket {BUCKET} --versioning-configuration Status=Enabled")
    assert "Terraform: plan" not in result.out


def test_a_lock_table_with_the_wrong_key_is_refused(project, aws):
    aws("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                 BillingMode="PAY_PER_REQUEST")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"The DynamoDB table {TABLE} is keyed id (S)", "LockID (string)",
                      "terraform.backend.lock_table", "inv iam.bootstrap --env stg")
    assert BUCKET not in buckets(aws) and record(aws, STG_RECORD) is None
