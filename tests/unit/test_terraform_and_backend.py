"""Terraform's failures named from its output, the plan summary, the script's environment; the backend's facts."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from runbook import backend, terraform
from runbook.config import Account, Backend
from runbook.errors import RunbookError

ENV = {"DEPLOY_MODE": "plan", "TF_STATE_BUCKET": "b", "TF_STATE_KEY": "k.tfstate", "TF_LOCK_TABLE": "t",
       "AWS_REGION": "eu-west-1", "TF_VAR_environment": "stg", "TERRAFORM_VERSION": "1.11.4"}
ACCOUNT = Account("nonprod", "123456789012", "eu-west-1")
BACKEND = Backend("b", "k.tfstate", "locks", "eu-west-1")
LOCK_BLOCK = """Error: Error acquiring the state lock
Lock Info:
  ID:        7d5a2d43-1c3e-5b1c-9d1e-2f1a3b4c5d6e
  Path:      b/k.tfstate
  Operation: OperationTypeApply
  Who:       alice@laptop
  Version:   1.11.4
  Created:   2026-11-30 12:37:49.893271922 +0000 UTC
"""


def failure(output: str, code: int = 1, env=ENV, ran=None) -> RunbookError:
    return terraform.failure(Path("/snap/root"), env, what="plan of environment stg", code=code, output=output,
                             ran=ran)


def test_a_lock_held_by_another_run_is_exit_75_with_who_and_the_release_command():
    error = failure(LOCK_BLOCK, 75)
    assert error.id == "state-lock-held" and error.code == 75
    assert "held by alice@laptop since 2026-11-30 12:37:49" in error.what and "(terraform apply" in error.what
    assert "inv iam.unlock --env stg --lock-id 7d5a2d43-1c3e-5b1c-9d1e-2f1a3b4c5d6e" in error.fix


def test_the_account_scopes_unlock_command_names_the_environment_of_the_run():
    # pasted on another branch (after --skip-branch-check), a command without --env would pick that branch's
    # environment, or none: the line names the environment the run was for
    env = {k: v for k, v in ENV.items() if k != "TF_VAR_environment"}
    error = terraform.failure(Path("/snap/root"), env, what="plan of account nonprod", code=75, output=LOCK_BLOCK,
                              environment="stg")
    assert "inv iam.unlock --env stg --account --lock-id 7d5a2d43-1c3e-5b1c-9d1e-2f1a3b4c5d6e" in error.fix


@pytest.mark.parametrize("said, cause, fix", [
    ("AccessDeniedException: User: arn:aws:iam::1:user/a is not authorized to perform: dynamodb:PutItem",
     "may not use the lock table or lock file (AccessDeniedException)", "dynamodb:GetItem, PutItem"),
    ("ResourceNotFoundException: Requested resource not found", "the lock table does not exist", "creates a missing"),
    # Terraform 1.0.3 (aws-sdk-go) and 1.11.4 (aws-sdk-go-v2) quoting a DynamoDB 5xx
    ("2 errors occurred:\n\t* InternalFailure: failed\n\tstatus code: 500, request id: \n",
     "a server error (HTTP 500) even after the AWS SDK's retries", "passes by itself"),
    ("operation error DynamoDB: PutItem, exceeded maximum number of attempts, 5, https response error StatusCode: 503,"
     " RequestID: 1, api error ServiceUnavailable: down", "a server error (HTTP 503)", "passes by itself"),
    ("something else entirely", "no other run holds it", "fix what Terraform's message says"),
], ids=["denied", "no-table", "5xx-tf1.0", "5xx-tf1.11", "other"])
def test_a_lock_that_cannot_be_taken_at_all_names_the_cause_aws_gave(said, cause, fix):
    error = failure(f"Error: Error acquiring the state lock\n\nError message: {said}\n", 1)
    assert error.id == "state-lock-failed" and error.code == 1 and "nothing was applied" in error.what
    assert cause in error.what and fix in error.fix
    assert ("AccessDenied" in error.what) == (cause.startswith("may not"))  # a 5xx is not blamed on permissions


def test_a_stale_saved_plan_is_refused_with_nothing_applied_not_a_partly_updated_state():
    output = ("Error: Saved plan is stale\n\nThe given plan file can no longer be applied because the state was "
              "changed by another operation after the plan was created.\n"
              "deploy-app.sh: error: terraform apply failed (exit 1); nothing was applied: the saved plan is stale\n")
    error = failure(output, 1, env={**ENV, "DEPLOY_MODE": "apply"})
    assert error.id == "plan-stale" and "nothing was applied" in error.what and "partly" not in str(error)


def test_a_lock_this_very_run_took_is_named_as_such(monkeypatch):
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    now = time.time()
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + " +0000 UTC"
    block = LOCK_BLOCK.replace("alice@laptop", f"{user}@{socket.gethostname()}").replace(
        "OperationTypeApply", "OperationTypePlan").replace("2026-11-30 12:37:49.893271922 +0000 UTC", created)
    monkeypatch.setattr(terraform, "other_terraform_in", lambda root: [])
    error = failure(block, 75, ran=(now - 1, now + 1))
    assert error.id == "state-lock-held" and "by every sign by this very run" in error.what


def test_the_digest_mismatch_gives_the_exact_put_item():
    output = ("Error: state data in S3 does not have the expected content.\nThe Terraform state in S3 has a checksum"
              " ... update the Digest value stored in the DynamoDB table to the following value: "
              "0123456789abcdef0123456789abcdef\n")
    error = failure(output)
    assert error.id == "state-digest-mismatch"
    item = json.dumps({"LockID": {"S": "b/k.tfstate-md5"}, "Digest": {"S": "0123456789abcdef0123456789abcdef"}})
    assert f"--item '{item}'" in error.fix


@pytest.mark.parametrize("output, expected, words", [
    ("deploy-app.sh: error: terraform apply failed (exit 1); state may be partly updated", "apply-failed",
     "terraform apply exited 1 (the state may be partly updated"),
    ("deploy-app.sh: error: terraform plan failed (exit 1); nothing was applied.", "plan-failed",
     "terraform plan exited 1 (nothing was applied)"),
    ("deploy-app.sh: error: 2 required environment variable(s) missing.", "deploy-script-failed",
     "stopped before Terraform: 2 required environment variable(s) missing"),
    ("Error: Unsupported Terraform Core version\n", "terraform-version", "required_version does not admit"),
    ("Error: Unreadable module directory\n", "module-missing", "not in the folders the apply may read"),
    ("", "deploy-script-failed", "without a message of its own"),
])
def test_the_failure_table_names_what_happened(output, expected, words):
    error = failure(output)
    assert error.id == expected and words in error.what


def test_a_secret_in_the_scripts_message_is_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    error = failure("deploy-app.sh: error: bad key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert "wJalrXUtnFEMI" not in error.what


def test_the_plan_summary_counts_actions_and_keeps_non_sensitive_outputs(tmp_path):
    (tmp_path / ".terraform").mkdir()
    plan = {"resource_changes": [{"change": {"actions": a}} for a in (["create"], ["update"], ["delete", "create"],
                                                                      ["no-op"])],
            "output_changes": {"a": {"actions": ["update"]}, "b": {"actions": ["no-op"]}},
            "planned_values": {"outputs": {"lambda_role_names": {"value": ["r"]}, "s": {"value": "x",
                                                                                       "sensitive": True}}}}
    (tmp_path / (terraform.PLAN_FILE + ".json")).write_text(json.dumps(plan))
    summary = terraform.read_plan(tmp_path)
    assert (summary.add, summary.change, summary.destroy, summary.outputs_changed) == (2, 1, 1, 1)
    assert summary.outputs == {"lambda_role_names": ["r"]} and str(summary).startswith("2 to add, 1 to change")


def test_a_missing_plan_summary_is_a_plan_failure(tmp_path):
    with pytest.raises(RunbookError) as caught:
        terraform.read_plan(tmp_path)
    assert caught.value.id == "plan-failed"


def test_terraform_gets_the_checked_keys_and_nothing_else_from_the_shell(monkeypatch):
    from runbook.aws import Credentials

    for name, value in {"AWS_PROFILE": "admin", "TF_CLI_ARGS_plan": "-destroy", "TF_VAR_project": "evil",
                        "AWS_ENDPOINT_URL_S3": "http://elsewhere", "TF_WORKSPACE": "x", "HOME": "/home/a",
                        "TF_LOG": "TRACE", "TF_LOG_PATH": "/tmp/log", "TF_REATTACH_PROVIDERS": "{}"}.items():
        monkeypatch.setenv(name, value)
    env = terraform.child_env(terraform.script_env(BACKEND, mode="plan", tf_vars={"project": "acme-api"},
                                                   credentials=Credentials("AKIA1", "s3cret", "tok")))
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA1" and env["AWS_SESSION_TOKEN"] == "tok"
    assert env["TF_VAR_project"] == "acme-api" and env["AWS_CONFIG_FILE"] == os.devnull
    assert not {"AWS_PROFILE", "TF_CLI_ARGS_plan", "AWS_ENDPOINT_URL_S3", "TF_WORKSPACE", "TF_LOG", "TF_LOG_PATH",
                "TF_REATTACH_PROVIDERS"} & set(env)  # TF_LOG=TRACE would print the session token
    assert env["HOME"] == "/home/a" and env["TF_LOCK_TABLE"] == "locks"


def test_s3_lock_mode_passes_no_lock_table():
    env = terraform.script_env(Backend("b", "k", "t", "eu-west-1", lock="s3"), mode="plan", tf_vars={},
                               lock_timeout_s=300)
    assert "TF_LOCK_TABLE" not in env and env["TF_LOCK_MODE"] == "s3" and env["TF_LOCK_TIMEOUT"] == "300s"
    for seconds, duration in ((0.5, "0.5s"), (2.25, "2.25s"), (86400, "86400s")):  # Go durations, never rounded
        assert terraform.script_env(BACKEND, mode="plan", tf_vars={}, lock_timeout_s=seconds)[
            "TF_LOCK_TIMEOUT"] == duration


def test_lock_info_from_the_table_and_from_terraforms_message():
    stored = backend.LockInfo.parse(json.dumps({"ID": "x-1", "Who": "a@b", "Operation": "OperationTypePlan",
                                                "Created": "2026-11-30T12:37:49.5Z"}))
    assert stored.id == "x-1" and stored.created_at() == pytest.approx(1796042269.5)
    said = backend.LockInfo.parse(LOCK_BLOCK)
    assert said.who == "alice@laptop" and said.version == "1.11.4"
    assert backend.LockInfo.parse("Error: Error acquiring the state lock\nno info") is None
    assert backend.LockInfo.parse('{"ID": ""}') is None


def test_a_lock_holder_from_outside_is_printed_safely():
    text = backend.LockInfo("id", who="\x1b[2Jevil\nline").describe()
    assert "\x1b" not in text and "\n" not in text


def test_backend_state_says_what_is_missing():
    assert backend.BackendState(True, True, "ACTIVE", "LockID (S)").verified
    assert not backend.BackendState(True, True, "CREATING", "LockID (S)").table_ready
    assert not backend.BackendState(True, True, "ACTIVE", "ID (S)").key_schema_ok
    assert backend.BackendState(True, False, table_needed=False).complete


def test_looking_at_a_backend_reads_its_protections_and_state_objects(stub):
    s3, s3_stub = stub("s3")
    ddb, ddb_stub = stub("dynamodb")
    s3_stub.add_response("head_bucket", {})
    s3_stub.add_response("get_bucket_versioning", {"Status": "Enabled"})
    s3_stub.add_client_error("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError",
                             http_status_code=404)
    s3_stub.add_response("get_public_access_block", {"PublicAccessBlockConfiguration": {k: True for k in (
        "BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")}})
    import io

    from botocore.response import StreamingBody

    body = b'{"version": 4, "terraform_version": "1.11.4", "serial": 3}'
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body))})
    ddb_stub.add_response("describe_table", {"Table": {"TableStatus": "ACTIVE", "KeySchema": [
        {"AttributeName": "LockID", "KeyType": "HASH"}], "AttributeDefinitions": [
        {"AttributeName": "LockID", "AttributeType": "S"}]}})
    sess = FakeSession({"s3": s3, "dynamodb": ddb})
    state = backend.look(sess, ACCOUNT, BACKEND, ["k.tfstate"])
    assert state.missing == ("default encryption",) and state.states == {"k.tfstate": "1.11.4"}
    assert state.table_key == "LockID (S)" and not state.verified


def test_a_refused_repair_names_the_commands_an_administrator_runs(stub):
    s3, s3_stub = stub("s3")
    s3_stub.add_client_error("put_bucket_versioning", "AccessDenied", http_status_code=403)
    with pytest.raises(RunbookError) as caught:
        backend.repair(FakeSession({"s3": s3}), ACCOUNT, BACKEND, ["versioning"])
    assert caught.value.id == "state-bucket-unprotected"
    assert "aws s3api put-bucket-versioning --bucket b --versioning-configuration Status=Enabled" in caught.value.fix


def test_a_503_on_a_repair_is_not_called_a_refusal(stub):
    s3, s3_stub = stub("s3")
    s3_stub.add_client_error("put_bucket_encryption", "ServiceUnavailable", http_status_code=503)
    with pytest.raises(RunbookError) as caught:
        backend.repair(FakeSession({"s3": s3}), ACCOUNT, BACKEND, ["default encryption"])
    assert caught.value.id == "aws-unreachable" and "may not" not in caught.value.what


class FakeSession:
    """A boto3 Session stand-in whose clients are the stubbed ones (``runbook.aws.client`` asks ``sess.client``)."""

    def __init__(self, clients):
        self.clients = clients

    def client(self, service, **kwargs):
        return self.clients[service]


TABLE_ACTIVE = {"Table": {"TableStatus": "ACTIVE", "TableName": "locks"}}


def test_a_backend_another_run_is_creating_is_waited_for_not_an_error(stub, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    s3, s3_stub = stub("s3")
    ddb, ddb_stub = stub("dynamodb")
    s3_stub.add_client_error("create_bucket", "BucketAlreadyOwnedByYou", http_status_code=409)
    for op in ("put_bucket_versioning", "put_bucket_encryption", "put_public_access_block"):
        s3_stub.add_response(op, {})
    s3_stub.add_response("put_bucket_lifecycle_configuration", {},
                         {"Bucket": "b", "LifecycleConfiguration": backend.LIFECYCLE})
    ddb_stub.add_client_error("create_table", "ResourceInUseException", http_status_code=400)
    ddb_stub.add_response("describe_table", {"Table": {"TableStatus": "CREATING", "TableName": "locks"}})
    ddb_stub.add_response("describe_table", TABLE_ACTIVE)
    done = backend.create(FakeSession({"s3": s3, "dynamodb": ddb}), ACCOUNT, BACKEND,
                          backend.BackendState(False, False, table_status=""))
    assert "S3 bucket b was just created by another run" in done
    assert "DynamoDB lock table locks is being created by another run" in done


def test_a_lock_table_that_never_becomes_active_ends_the_wait_with_a_message(stub, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    monkeypatch.setattr(backend, "TABLE_WAIT_S", 4.0)
    ddb, ddb_stub = stub("dynamodb")
    for _ in range(2):
        ddb_stub.add_response("describe_table", {"Table": {"TableStatus": "CREATING", "TableName": "locks"}})
    with pytest.raises(RunbookError) as caught:
        backend.create(FakeSession({"dynamodb": ddb, "s3": stub("s3")[0]}), ACCOUNT, BACKEND,
                       backend.BackendState(True, True, "CREATING", "LockID (S)"))
    assert caught.value.id == "lock-table-not-active"
    assert "aws dynamodb describe-table --table-name locks" in caught.value.fix


def test_terraforms_output_keeps_its_colours_but_no_other_control_character():
    # Terraform quotes outside text (a state lock's Who, AWS's messages): it must not drive the terminal
    read_end, write_end = os.pipe()
    sink = type("Sink", (), {"buffer": io.BytesIO()})()
    os.write(write_end, b"\x1b[1mError\x1b[0m Who: m\x1b]0;PWNED\x07\x1b[2J\r\n")
    os.close(write_end)
    pump = terraform._Pump(os.fdopen(read_end, "rb"), sink)
    pump.join(5)
    assert sink.buffer.getvalue() == b"\x1b[1mError\x1b[0m Who: m\\x1b]0;PWNED\\x07\\x1b[2J\\x0d\n"


RELEASE_FAILED = ("Apply complete! Resources: 1 added, 0 changed, 0 destroyed.\n\n"
                  "Error: Error releasing the state lock\n\n")


@pytest.mark.parametrize("said, lock_id", [
    # Terraform 1.0.3: the lock's ID in its Lock Info block, no force-unlock line
    ("Error message: InternalServerError: injected\nLock Info:\n  ID:        fd44df5c-21d0-f356-c5ff-44cfd9e7c418\n"
     "  Operation: OperationTypeApply\n", "fd44df5c-21d0-f356-c5ff-44cfd9e7c418"),
    ("Error message: InternalError\n\nPlease release the lock manually using:\n\n  terraform force-unlock "
     "7d5a2d43-1c3e-5b1c-9d1e-2f1a3b4c5d6e\n", "7d5a2d43-1c3e-5b1c-9d1e-2f1a3b4c5d6e"),
], ids=["lock-info", "force-unlock"])
def test_a_lock_terraform_could_not_release_is_named_with_its_release_command(said, lock_id):
    error = failure(RELEASE_FAILED + said + "deploy-app.sh: error: terraform apply failed (exit 1)\n", 1,
                    env={**ENV, "DEPLOY_MODE": "apply"})
    assert error.id == "state-lock-failed" and "could not release its state lock" in error.what
    assert "an apply may have changed IAM" in error.what and f"(lock {lock_id})" in error.what
    assert f"inv iam.unlock --env stg --lock-id {lock_id}" in error.fix


def test_a_lock_left_by_a_failed_plan_is_named_and_nothing_is_said_applied():
    said = "Error message: InternalServerError: injected\nLock Info:\n  ID: fd44df5c-21d0-f356-c5ff-44cfd9e7c418\n"
    error = failure("Error: Invalid reference\n\nError: Error releasing the state lock\n\n" + said +
                    "deploy-app.sh: error: terraform plan failed (exit 1); nothing was applied.\n", 1)
    assert error.id == "state-lock-failed" and "changed nothing" in error.what and "apply" not in error.what
    assert "(lock fd44df5c-21d0-f356-c5ff-44cfd9e7c418)" in error.what
    assert "inv iam.unlock --env stg --lock-id fd44df5c-21d0-f356-c5ff-44cfd9e7c418" in error.fix


def test_the_lifecycle_rule_documented_for_older_buckets_is_the_one_a_new_bucket_gets():
    text = (Path(__file__).resolve().parents[2] / "docs" / "RUNBOOK.md").read_text()
    documented = re.search(r"--lifecycle-configuration '([^']+)'", text)
    assert documented and json.loads(documented.group(1)) == backend.LIFECYCLE


def test_a_lock_refused_is_not_called_a_server_error_for_a_5xx_further_down():
    output = ("Error: Error acquiring the state lock\n\nError message: AccessDeniedException: not authorized, "
              "StatusCode: 400\n" + "unrelated output\n" * 400 + "some other call: StatusCode: 500\n")
    error = failure(output, 1)
    assert "may not use the lock table" in error.what and "server error" not in error.what


def test_differences_name_each_changed_resource_and_the_attributes_that_differ(tmp_path):
    (tmp_path / ".terraform").mkdir()
    (tmp_path / (terraform.PLAN_FILE + ".json")).write_text(json.dumps({"resource_changes": [
        {"address": 'aws_iam_role.lambda["api"]', "change": {"actions": ["update"],
         "before": {"name": "r", "assume_role_policy": "a", "tags": {}},
         "after": {"name": "r", "assume_role_policy": "b", "tags": {}, "arn": None}, "after_unknown": {"arn": True}}},
        {"address": "aws_iam_role_policy.gone", "change": {"actions": ["create"], "before": None, "after": {}}},
        {"address": "data.aws_partition.current", "change": {"actions": ["read"]}},
        {"address": "aws_iam_policy.same", "change": {"actions": ["no-op"]}},
    ]}))
    assert terraform.differences(tmp_path) == ['aws_iam_role.lambda["api"]: update (assume_role_policy)',
                                               "aws_iam_role_policy.gone: create"]
    (tmp_path / (terraform.PLAN_FILE + ".json")).write_text("{not json")
    with pytest.raises(RunbookError) as caught:
        terraform.differences(tmp_path)
    assert caught.value.id == "plan-failed"


def test_in_migration_mode_a_table_item_of_another_lock_is_left_alone_and_said(stub):
    # dynamodb+s3: the lock file is released, then the table's item only while there is none or it holds that
    # lock's ID (the condition); a failed condition means another lock holds the state: said, never a success
    s3, s3_stub = stub("s3")
    ddb, ddb_stub = stub("dynamodb")
    both = Backend("b", "k.tfstate", "locks", "eu-west-1", lock="dynamodb+s3")
    s3_stub.add_response("delete_object", {}, {"Bucket": "b", "Key": "k.tfstate.tflock", "IfMatch": '"e1"'})
    ddb_stub.add_client_error("delete_item", "ConditionalCheckFailedException", http_status_code=400)
    with pytest.raises(RunbookError) as partly:
        backend.release_lock(FakeSession({"s3": s3, "dynamodb": ddb}), ACCOUNT, both,
                             backend.LockInfo("x-1", etag='"e1"'))
    assert "the lock file s3://b/k.tfstate.tflock WAS released, but it is no longer lock x-1; nothing else was " \
        "released" in partly.value.what
    ddb_stub.add_client_error("delete_item", "ConditionalCheckFailedException", http_status_code=400)
    with pytest.raises(RunbookError) as caught:  # a lock read from the table that changed meanwhile: refused
        backend.release_lock(FakeSession({"dynamodb": ddb}), ACCOUNT, both, backend.LockInfo("x-1"))
    assert caught.value.id == "unlock-refused" and "changed while you confirmed" in caught.value.what


def test_a_lock_table_that_does_not_exist_holds_no_digests(stub):
    # facts._state_hint asks for digests where the backend locks with a table, whether or not the table exists: a
    # missing table (a backend half gone) is no digest, not an AWS failure that hides the backend's findings
    ddb, ddb_stub = stub("dynamodb")
    ddb_stub.add_client_error("scan", "ResourceNotFoundException", http_status_code=400)
    assert backend.digests(FakeSession({"dynamodb": ddb}), ACCOUNT, BACKEND) == []


def test_in_migration_mode_a_lock_file_and_a_table_item_of_two_locks_are_refused_before_any_release(stub):
    import io

    from botocore.response import StreamingBody

    s3, s3_stub = stub("s3")
    ddb, ddb_stub = stub("dynamodb")
    both = Backend("b", "k.tfstate", "locks", "eu-west-1", lock="dynamodb+s3")
    body = json.dumps({"ID": "run-a", "Who": "bob@laptop"}).encode()
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body)), "ETag": '"e1"'},
                         {"Bucket": "b", "Key": "k.tfstate.tflock"})
    ddb_stub.add_response("get_item", {"Item": {"LockID": {"S": "b/k.tfstate"}, "Info": {"S": json.dumps(
        {"ID": "run-b", "Who": "carol@ci"})}}}, {"TableName": "locks", "ConsistentRead": True,
                                                 "Key": {"LockID": {"S": "b/k.tfstate"}}})
    with pytest.raises(RunbookError) as caught:
        backend.read_lock(FakeSession({"s3": s3, "dynamodb": ddb}), ACCOUNT, both)
    assert caught.value.id == "unlock-refused" and "holds lock run-a and the lock table lock run-b" in caught.value.what
