"""The apply goes to the configured state, and nowhere else: the Terraform backend verified on every run,
created only on a true first deploy (otherwise `inv iam.bootstrap`), and the state object checked against
the applied record. Run as a user runs them: moto, real Terraform, real git."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.project import ACCOUNT_ID, Project, base_config
from tests.test_iam_tasks import BUCKET, STG_KEY, TABLE, assert_user_error, delete_state_bucket, record

STG_RECORD = "/acme-api/iam/env/stg"


@pytest.fixture
def aws(moto_reset, aws_credentials):
    """boto3 clients against moto: aws("s3"), aws("dynamodb"), aws("ssm")."""
    import boto3

    return lambda service: boto3.client(service, endpoint_url=moto_reset, region_name="eu-west-1")


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


@pytest.fixture
def applied(project, aws) -> Project:
    """The project after a successful `inv iam.env --name stg` (backend created, state and record written)."""
    first = project.inv("iam.env", "--name", "stg")
    assert first.code == 0, first.all
    assert record(aws("ssm"), STG_RECORD) is not None
    return project


def state_keys(s3, bucket: str = BUCKET) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def buckets(s3) -> list[str]:
    return [b["Name"] for b in s3.list_buckets()["Buckets"]]


# -- workspace ---------------------------------------------------------------------------------


@pytest.mark.terraform
def test_a_workspace_selected_by_hand_is_refused_before_the_plan(applied, aws):
    root = applied.path / "roots" / "environment"
    made = subprocess.run(["terraform", "workspace", "new", "sandbox"], cwd=root, env=applied.env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    sandbox = f"env:/sandbox/{STG_KEY}"
    empty = aws("s3").get_object(Bucket=BUCKET, Key=sandbox)["Body"].read()  # what `workspace new` wrote
    before = record(aws("ssm"), STG_RECORD)
    result = applied.inv("iam.env", "--name", "stg")
    assert_user_error(result, "workspace 'sandbox' selected", "env:/sandbox/",
                      "cd roots/environment && terraform workspace select default")
    assert "Terraform: plan" not in result.out
    assert aws("s3").get_object(Bucket=BUCKET, Key=sandbox)["Body"].read() == empty, "nothing applied to it"
    assert record(aws("ssm"), STG_RECORD) == before, "no record written"
    # the fix in the message works
    fixed = subprocess.run(["terraform", "workspace", "select", "default"], cwd=root, env=applied.env,
                           capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    again = applied.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all


# -- the state object ----------------------------------------------------------------------------


@pytest.mark.terraform
def test_a_changed_state_key_with_a_record_is_refused_with_the_move_command(applied, aws):
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["backend"] = {"environment_state_key": "{project}/iam/environments/{environment}.tfstate"}
    applied.commit_config(config)
    before = record(aws("ssm"), STG_RECORD)
    result = applied.inv("iam.env", "--name", "stg")
    new_key = "acme-api/iam/environments/stg.tfstate"
    assert_user_error(result, "Environment stg has an applied record", f"s3://{BUCKET}/{new_key} does not exist",
                      f"aws s3 cp s3://{BUCKET}/{STG_KEY} s3://{BUCKET}/{new_key}", "terraform.backend")
    assert "Terraform: plan" not in result.out, "stopped before the plan"
    assert new_key not in state_keys(aws("s3"))
    assert record(aws("ssm"), STG_RECORD) == before, "no record written"
    # the command in the message moves the state; the next run plans from it
    aws("s3").copy_object(Bucket=BUCKET, Key=new_key, CopySource={"Bucket": BUCKET, "Key": STG_KEY})
    again = applied.inv("iam.env", "--name", "stg")
    assert again.code == 0, again.all
    assert "0 to add, 0 to change, 0 to destroy" in again.out


@pytest.mark.terraform
def test_a_deleted_state_object_with_a_record_stops_before_the_apply(applied, aws):
    s3 = aws("s3")
    s3.delete_object(Bucket=BUCKET, Key=STG_KEY)  # versioned: a delete marker hides the last version
    before = record(aws("ssm"), STG_RECORD)
    result = applied.inv("iam.env", "--name", "stg")  # the backend was seen: this look-up finishes during the plan
    assert_user_error(result, f"s3://{BUCKET}/{STG_KEY} does not exist", "nothing was applied (the plan above",
                      "aws s3api delete-object", "--version-id")
    assert "Terraform: apply" not in result.out
    assert STG_KEY not in state_keys(s3)
    assert record(aws("ssm"), STG_RECORD) == before
    again = applied.inv("iam.env", "--name", "stg")  # now looked up before the plan
    assert_user_error(again, "nothing was planned or applied")
    assert "Terraform: plan" not in again.out
    # the command in the message (delete the delete marker) brings the state back
    marker = next(m for m in s3.list_object_versions(Bucket=BUCKET, Prefix=STG_KEY)["DeleteMarkers"] if m["IsLatest"])
    assert f"--version-id {marker['VersionId']}" in result.all
    s3.delete_object(Bucket=BUCKET, Key=STG_KEY, VersionId=marker["VersionId"])
    restored = applied.inv("iam.env", "--name", "stg")
    assert restored.code == 0, restored.all
    assert "0 to add, 0 to change, 0 to destroy" in restored.out


# -- a backend that has gone, or a mistyped one: no silent re-creation ---------------------------------


@pytest.mark.terraform
def test_a_deleted_bucket_with_records_is_refused_naming_bootstrap(applied, aws):
    s3 = aws("s3")
    delete_state_bucket(s3)
    before = record(aws("ssm"), STG_RECORD)
    gone = applied.inv("iam.env", "--name", "stg")  # seen on the earlier run: found during the plan
    assert_user_error(gone, "The Terraform backend has gone", BUCKET, "inv iam.bootstrap --env stg")
    assert BUCKET not in buckets(s3)
    again = applied.inv("iam.env", "--name", "stg")  # looked up before the plan this time
    assert_user_error(again, f"S3 bucket {BUCKET} of account", "not a first deploy",
                      "environment stg has an applied record", "state digest", "inv iam.bootstrap --env stg")
    assert "Terraform: plan" not in again.out
    assert BUCKET not in buckets(s3), "not re-created behind the operator's back"
    locks = [item["LockID"]["S"] for item in aws("dynamodb").scan(TableName=TABLE)["Items"]]
    assert f"{BUCKET}/{STG_KEY}-md5" in locks, "the old state's digest is not removed behind anyone's back"
    assert record(aws("ssm"), STG_RECORD) == before


@pytest.mark.terraform
def test_a_mistyped_bucket_is_refused_and_the_known_bucket_named(applied, aws):
    config = base_config(aws("s3").meta.endpoint_url)
    config["terraform"]["backend"] = {"state_bucket": "{project}-tfstaet-{account_id}"}
    applied.commit_config(config)
    before = record(aws("ssm"), STG_RECORD)
    result = applied.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"acme-api-tfstaet-{ACCOUNT_ID}", "not a first deploy",
                      f"the lock table knows state in {BUCKET}", "set it back", "inv iam.bootstrap --env stg")
    assert f"acme-api-tfstaet-{ACCOUNT_ID}" not in buckets(aws("s3"))
    assert record(aws("ssm"), STG_RECORD) == before


@pytest.mark.terraform
def test_a_deleted_lock_table_is_not_recreated_silently(applied, aws):
    aws("dynamodb").delete_table(TableName=TABLE)
    before = record(aws("ssm"), STG_RECORD)
    gone = applied.inv("iam.env", "--name", "stg")  # found during the plan (seen before); the next run looks first
    assert_user_error(gone, "The Terraform backend has gone: DynamoDB table", "inv iam.bootstrap --env stg")
    result = applied.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"DynamoDB lock table {TABLE}", "not a first deploy", "holds state objects",
                      "inv iam.bootstrap --env stg")
    assert TABLE not in aws("dynamodb").list_tables()["TableNames"]
    assert record(aws("ssm"), STG_RECORD) == before


# -- inv iam.bootstrap -----------------------------------------------------------------------------------


@pytest.mark.terraform
def test_bootstrap_shows_asks_then_recreates_a_deleted_bucket(applied, aws):
    s3, ddb = aws("s3"), aws("dynamodb")
    delete_state_bucket(s3)
    dry = applied.inv("iam.bootstrap", "--env", "stg", "--dry-run")
    assert dry.code == 0, dry.all
    assert f"create S3 bucket {BUCKET}" in dry.out and "why:" in dry.out
    assert "NOT a first deploy" in dry.out and "remove 1 state digest(s)" in dry.out
    assert "Dry run: nothing was changed" in dry.out
    assert BUCKET not in buckets(s3)
    unasked = applied.inv("iam.bootstrap", "--env", "stg")
    assert_user_error(unasked, "no terminal to ask", "--yes")
    assert BUCKET not in buckets(s3)
    done = applied.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert done.code == 0, done.all
    assert "Removed 1 state digest(s)" in done.out
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    assert not [i for i in ddb.scan(TableName=TABLE)["Items"] if i["LockID"]["S"].endswith("-md5")]
    # the state itself is gone: the scope with a record is refused until it is restored (or the record removed)
    after = applied.inv("iam.env", "--name", "stg")
    assert_user_error(after, "has an applied record", "does not exist", "aws ssm delete-parameter --name "
                      f"{STG_RECORD}")
    assert "Terraform: plan" not in after.out, "bootstrap forgot what this machine had verified: looked up first"
    nothing = applied.inv("iam.bootstrap", "--env", "stg")
    assert nothing.code == 0 and "Nothing to do" in nothing.out, nothing.all


def test_bootstrap_in_an_empty_account_creates_the_backend(project, aws):
    result = project.inv("iam.bootstrap", "--env", "stg", "--yes")
    assert result.code == 0, result.all
    assert "NOT a first deploy" not in result.out
    assert BUCKET in buckets(aws("s3"))
    table = aws("dynamodb").describe_table(TableName=TABLE)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "LockID", "KeyType": "HASH"}]


def test_two_bootstraps_at_once_both_succeed(project, aws):
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
        assert "fix the cause" not in result.all
    assert BUCKET in buckets(aws("s3"))


# -- verified on every run -------------------------------------------------------------------------------


@pytest.mark.terraform
def test_a_half_configured_bucket_is_repaired_and_said_so(applied, aws):
    s3 = aws("s3")
    s3.delete_bucket_encryption(Bucket=BUCKET)
    s3.delete_public_access_block(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    result = applied.inv("iam.env", "--name", "stg")
    assert result.code == 0, result.all
    assert "lacked versioning, default encryption, public access block: repaired" in result.out
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    # the same when this machine has not seen the backend before (looked up before the plan)
    s3.delete_bucket_encryption(Bucket=BUCKET)
    unseen = {**applied.env, "XDG_CACHE_HOME": str(applied.path.parent / "another-cache")}
    fresh = applied.inv("iam.env", "--name", "stg", env=unseen)
    assert fresh.code == 0, fresh.all
    assert f"the state bucket {BUCKET} lacked default encryption: repaired" in fresh.out
    assert fresh.out.index("repaired") < fresh.out.index("Terraform: plan")
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]


def test_a_half_configured_bucket_the_caller_may_not_repair_is_refused(project, aws, monkeypatch):
    # An interrupt (or AccessDenied) right after CreateBucket left a bare bucket; this identity may switch
    # encryption and the public access block on, but not versioning.
    from moto import settings

    s3, iam, ssm = aws("s3"), aws("iam"), aws("ssm")  # made before monkeypatch.undo() drops the fake credentials
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
    assert record(ssm, STG_RECORD) is None


def test_a_lock_table_with_the_wrong_key_schema_is_refused(project, aws):
    aws("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                 BillingMode="PAY_PER_REQUEST")
    result = project.inv("iam.env", "--name", "stg")
    assert_user_error(result, f"The DynamoDB table {TABLE} is keyed id (S)", "LockID (string)",
                      "terraform.backend.lock_table", "inv iam.bootstrap --env stg")
    assert "Terraform: plan" not in result.out
    assert BUCKET not in buckets(aws("s3"))
    assert record(aws("ssm"), STG_RECORD) is None


# -- two first runs at once: "another run is creating it" is waited for, not an error ----------------


def test_creating_a_backend_that_another_run_is_creating_waits_for_it(moto_reset, aws, aws_credentials):
    """The other run's answers, as AWS gives them: BucketAlreadyOwnedByYou, ResourceInUseException, CREATING."""
    import boto3

    from runbook import aws as runbook_aws
    from runbook.config import Account, Backend

    account = Account(name="nonprod", id=ACCOUNT_ID, region="eu-west-1", endpoint_url=moto_reset)
    backend = Backend(bucket=BUCKET, key=STG_KEY, lock_table=TABLE, region="eu-west-1", endpoint_url=moto_reset)
    sess = boto3.Session(region_name="eu-west-1")
    state = runbook_aws.backend_state(sess, account, backend, [STG_KEY])
    assert not state.bucket_exists and not state.table_exists
    creating = {"describes": 0}

    def other_run_creates_the_bucket(**_):
        aws("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

    def other_run_creates_the_table(**_):
        aws("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
                                     AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
                                     BillingMode="PAY_PER_REQUEST")

    def still_creating(parsed, **_):
        creating["describes"] += 1
        if creating["describes"] <= 2:
            parsed["Table"]["TableStatus"] = "CREATING"

    sess.events.register("before-call.s3.CreateBucket", other_run_creates_the_bucket)
    sess.events.register("before-call.dynamodb.CreateTable", other_run_creates_the_table)
    sess.events.register("after-call.dynamodb.DescribeTable", still_creating)
    done = runbook_aws.create_backend(sess, account, backend, state, poll_s=0.01)
    assert f"S3 bucket {BUCKET} was just created by another run" in done
    assert f"DynamoDB lock table {TABLE} is being created by another run" in done
    assert creating["describes"] == 3, "waited while the table was CREATING"
    after = runbook_aws.backend_state(boto3.Session(region_name="eu-west-1"), account, backend)
    assert after.verified


def test_a_table_that_stays_creating_ends_the_wait_with_a_clear_message(moto_reset, aws, aws_credentials):
    import boto3

    from runbook import aws as runbook_aws
    from runbook.config import Account, Backend
    from runbook.errors import RunbookError

    account = Account(name="nonprod", id=ACCOUNT_ID, region="eu-west-1", endpoint_url=moto_reset)
    backend = Backend(bucket=BUCKET, key=STG_KEY, lock_table=TABLE, region="eu-west-1", endpoint_url=moto_reset)
    aws("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
                                 BillingMode="PAY_PER_REQUEST")
    sess = boto3.Session(region_name="eu-west-1")
    sess.events.register("after-call.dynamodb.DescribeTable",
                         lambda parsed, **_: parsed["Table"].__setitem__("TableStatus", "CREATING"))
    with pytest.raises(RunbookError) as raised:
        runbook_aws.wait_for_table(sess, account, backend, wait_s=0.05, poll_s=0.01)
    assert "still CREATING" in raised.value.message
    assert "aws dynamodb describe-table --table-name acme-api-tf-locks" in raised.value.message


@pytest.mark.terraform
def test_tf_workspace_in_the_shell_does_not_move_the_state(applied, aws):
    root = applied.path / "roots" / "environment"
    for args in (["workspace", "new", "sandbox"], ["workspace", "select", "default"]):  # a workspace exists
        done = subprocess.run(["terraform", *args], cwd=root, env=applied.env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    sandbox = f"env:/sandbox/{STG_KEY}"
    empty = aws("s3").get_object(Bucket=BUCKET, Key=sandbox)["Body"].read()
    result = applied.inv("iam.env", "--name", "stg", env={**applied.env, "TF_WORKSPACE": "sandbox"})
    assert aws("s3").get_object(Bucket=BUCKET, Key=sandbox)["Body"].read() == empty, result.all
    if result.code == 0:
        assert "0 to add, 0 to change, 0 to destroy" in result.out, "planned from the configured state"
    else:
        assert_user_error(result, "TF_WORKSPACE")
