"""Signals, pipes, state locks and failed applies, run as a user runs them: `inv` in a subprocess, real
Terraform 1.0.3, moto, real git.

Terraform runs in a process of its own; to stop it at a known point (its state lock held, the
state being written) the configuration points at a loopback proxy in front of moto
(tests/aws_proxy.py) that holds one request for a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.aws_proxy import AwsProxy
from tests.project import ACCOUNT_ID, Project, base_config, git

INV = str(Path(sys.executable).parent / "inv")
BUCKET = f"acme-api-tfstate-{ACCOUNT_ID}"
TABLE = "acme-api-tf-locks"
STG_KEY = "acme-api/iam/env/stg.tfstate"
ACCOUNT_KEY = "acme-api/iam/account.tfstate"
LOCK_ID = "4f2b9c1e-7d3a-4e8b-9c6f-1a2b3c4d5e6f"
PLAN_JSON = "roots/environment/.terraform/runbook.tfplan.json"


def aws(endpoint: str, service: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def held_locks(endpoint: str) -> list[str]:
    """The state locks in the lock table (not the state digests, which end in -md5)."""
    items = aws(endpoint, "dynamodb").scan(TableName=TABLE)["Items"]
    return [i["LockID"]["S"] for i in items if not i["LockID"]["S"].endswith("-md5")]


def parameters(endpoint: str) -> list[str]:
    return [p["Name"] for p in aws(endpoint, "ssm").describe_parameters()["Parameters"]]


def lock_by_someone_else(endpoint: str, lock_id: str = LOCK_ID, key: str = STG_KEY) -> dict:
    """A state lock on *key* (stg's state) as another Terraform run writes it (statemgr.LockInfo as JSON)."""
    info = {"ID": lock_id, "Operation": "OperationTypeApply", "Info": "", "Who": "alice@laptop-7",
            "Version": "1.0.3", "Created": "2026-11-30T08:01:02.345678Z", "Path": f"{BUCKET}/{key}"}
    aws(endpoint, "dynamodb").put_item(TableName=TABLE, Item={"LockID": {"S": f"{BUCKET}/{key}"},
                                                              "Info": {"S": json.dumps(info)}})
    return info


def state_write(request) -> bool:
    """Terraform writing stg's state to S3 (at the end of an apply, its state lock held)."""
    return request.method == "PUT" and request.path.split("?")[0].endswith("/stg.tfstate")


def start(project: Project, *args: str, **popen) -> subprocess.Popen:
    """``inv ARGS`` in the clone, in a session of its own (its own process group), as from a terminal."""
    return subprocess.Popen([INV, *args], cwd=project.path, env=project.env, text=True, start_new_session=True,
                            **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen})


def wait_until_held(proxy: AwsProxy, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    if not proxy.held.wait(timeout_s):
        proc.kill()
        pytest.fail("Terraform never reached the held request:\n" + "".join(filter(None, proc.communicate())))


def assert_user_error(result, *needles: str) -> None:
    assert result.code != 0, result.all
    assert "Traceback" not in result.all, result.all
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


@pytest.fixture
def proxy(moto_reset):
    with AwsProxy(moto_reset) as running:
        yield running


@pytest.fixture
def proxied(tmp_path, proxy, aws_env) -> Project:
    """A clone whose account endpoint is the proxy: every AWS call of the runbook and Terraform goes through it."""
    return Project.create(tmp_path, aws_env, base_config(proxy.url))


# -- Invoke's core --dry ----------------------------------------------------------------------------


@pytest.mark.terraform
@pytest.mark.parametrize("flag", ["--dry", "-R"])
def test_invokes_core_dry_flag_gives_the_dry_run_and_applies_nothing(project, moto_reset, flag):
    result = project.inv(flag, "iam.env", "--name", "stg")
    assert result.code == 0, result.all
    assert "Dry run: IAM for environment stg" in result.out
    assert aws(moto_reset, "s3").list_buckets()["Buckets"] == [], "the backend was created"
    assert parameters(moto_reset) == [], "a record was written"


def test_invoke_run_dry_from_the_environment_refuses_a_task_without_a_dry_run(project):
    result = project.inv("ci.deploy", "--env", "stg", env={**project.env, "INVOKE_RUN_DRY": "1"})
    assert_user_error(result, "asks for a dry run", "nothing was done")
    rerun = project.inv("-R", "ci.rerun", "--env", "stg")
    assert_user_error(rerun, "asks for a dry run", "(rerun) has none")


def test_core_dry_flag_leaves_read_only_tasks_alone(project):
    result = project.inv("-R", "config.check")
    assert result.code == 0, result.all


# -- SIGTERM, SIGHUP and a closed pipe ---------------------------------------------------------------


@pytest.mark.terraform
@pytest.mark.parametrize(("signum", "to_group", "code"), [
    (signal.SIGTERM, False, 143), (signal.SIGTERM, True, 143), (signal.SIGHUP, False, 129)])
def test_a_stop_signal_lets_terraform_finish_cleanly_and_release_its_lock(proxied, proxy, moto_reset, signum,
                                                                          to_group, code):
    proxy.hold, proxy.hold_s = state_write, 6
    proc = start(proxied, "iam.env", "--name", "stg")
    wait_until_held(proxy, proc)
    assert held_locks(moto_reset), "Terraform holds the state lock while it writes the state"
    if to_group:
        os.killpg(proc.pid, signum)  # e.g. a CI runner stopping the job's process group
    else:
        proc.send_signal(signum)  # e.g. `timeout 10m inv ...`
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err
    assert f"stopped by {signal.Signals(signum).name}" in err, err
    assert "Interrupted during the apply to environment stg; Terraform was asked to stop" in err, err
    assert held_locks(moto_reset) == [], "inv ended before Terraform released its state lock"
    assert parameters(moto_reset) == [], "an interrupted run must not write the record"


@pytest.mark.terraform
def test_ctrl_c_with_output_through_tee_does_not_kill_terraform(proxied, proxy, moto_reset):
    proxy.hold, proxy.hold_s = state_write, 6
    log = proxied.path.parent / "run.log"  # outside the checkout, which must stay clean
    code = proxied.path.parent / "inv.code"
    # `trap true INT` keeps this shell alive to note inv's exit status (its children still get Ctrl-C's SIGINT)
    line = f"trap true INT; {INV} iam.env --name stg 2>&1 | tee {log}; echo ${{PIPESTATUS[0]}} >{code}"
    shell = subprocess.Popen(["bash", "-c", line], cwd=proxied.path,
                             env=proxied.env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_until_held(proxy, shell)
    os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole pipeline; tee dies
    shell.wait(timeout=90)
    deadline = time.monotonic() + 30
    while held_locks(moto_reset) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert held_locks(moto_reset) == [], "Terraform died writing to the closed pipe and left its state lock held"
    assert code.read_text().strip() == "130", "inv must end as documented for Ctrl-C, even with its output gone"


# -- state locks ---------------------------------------------------------------------------------------


@pytest.mark.terraform
def test_a_lock_held_by_someone_else_says_who_since_when_and_how_to_release_it(project, moto_reset):
    assert project.inv("iam.env", "--name", "stg").code == 0
    lock_by_someone_else(moto_reset)
    locked = project.inv("iam.env", "--name", "stg")
    assert locked.code == 75, locked.all
    assert_user_error(locked, "locked by another run", "alice@laptop-7", "2026-11-30", LOCK_ID, "nothing was applied",
                      f"inv iam.unlock --env stg --lock-id {LOCK_ID}", "--lock-timeout-s")
    assert "partly updated" not in locked.all
    assert "Terraform's own message is above" not in locked.all

    no_terminal = project.inv("iam.unlock", "--env", "stg", "--lock-id", LOCK_ID)
    assert_user_error(no_terminal, "no terminal to ask")
    other = project.inv("iam.unlock", "--env", "stg", "--lock-id", "0000-not-this-one", "--yes")
    assert_user_error(other, f"has ID '{LOCK_ID}'", "nothing was released", f"--lock-id {LOCK_ID}")
    assert held_locks(moto_reset) == [f"{BUCKET}/{STG_KEY}"]

    # released after a confirmation typed at a terminal
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen([INV, "iam.unlock", "--env", "stg", "--lock-id", LOCK_ID], cwd=project.path,
                                env=project.env, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        os.write(controller, b"y\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0, out + err
    assert "alice@laptop-7" in out and f"Released lock {LOCK_ID}" in out, out
    assert held_locks(moto_reset) == []
    assert project.inv("iam.env", "--name", "stg").code == 0


def lock_write(request) -> bool:
    """Terraform taking stg's state lock: a conditional DynamoDB PutItem of the lock item."""
    return (request.target.endswith(".PutItem") and b"attribute_not_exists" in request.body
            and f'"{BUCKET}/{STG_KEY}"'.encode() in request.body)


@pytest.mark.terraform
def test_a_lock_write_whose_answer_was_lost_is_named_as_this_runs_own_lock(proxied, proxy, moto_reset):
    """Terraform's lock write is applied but its answer lost; the AWS SDK writes again and finds Terraform's
    own lock. Seen with Terraform 1.11.4 against moto under load (its debug log shows the second write);
    made certain here by a proxy that drops the first answer. The message must not send the administrator
    looking for another run, and its command must release the lock."""
    dropped = []

    def first_lock_write(request) -> bool:
        if lock_write(request) and not dropped:
            dropped.append(request)
            return True
        return False

    proxy.drop = first_lock_write
    proc = start(proxied, "iam.env", "--name", "stg")
    out, err = proc.communicate(timeout=180)
    assert dropped, "Terraform never wrote its state lock"
    assert proc.returncode == 75, out + err
    assert "by this very run" in err and "nothing was applied" in err and "another run" not in err, err
    assert "pgrep -a terraform" in err
    lock_id = re.search(r"inv iam\.unlock --env stg --lock-id ([0-9A-Za-z-]+)", err).group(1)
    assert held_locks(moto_reset) == [f"{BUCKET}/{STG_KEY}"]
    assert "/acme-api/iam/env/stg" not in parameters(moto_reset)

    released = proxied.inv("iam.unlock", "--env", "stg", "--lock-id", lock_id, "--yes")
    assert released.code == 0, released.all
    assert held_locks(moto_reset) == []
    assert proxied.inv("iam.env", "--name", "stg").code == 0


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="reads Linux's /proc")
def test_a_lock_is_not_called_this_runs_own_while_a_terraform_still_runs_in_the_root(tmp_path):
    """This command's Terraform has exited; a Terraform still running in the same root module is another
    run (a second terminal), however much its lock looks like this run's."""
    import shutil

    from runbook import terraform
    from tests.test_pure_logic import ENV, held_by_this_machine

    now = time.time()
    env = {**ENV, "DEPLOY_MODE": "apply", "TERRAFORM_VERSION": "1.11.4"}
    output = held_by_this_machine(now - 1)
    fake = tmp_path / "bin" / "terraform"  # a process named terraform, as the other run's is
    fake.parent.mkdir()
    shutil.copy(shutil.which("sleep"), fake)
    root = tmp_path / "root"
    root.mkdir()
    other = subprocess.Popen([str(fake), "30"], cwd=root)
    try:
        deadline = time.monotonic() + 10
        while not terraform.other_terraform_in(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert terraform.other_terraform_in(root) == [other.pid]
        error = terraform.failure(root, env, what="apply to environment stg", code=75, output=output,
                                  ran=(now - 3, now))
        assert "locked by another run" in error.what and "very run" not in error.what
    finally:
        other.kill()
        other.wait()
    error = terraform.failure(root, env, what="apply to environment stg", code=75, output=output, ran=(now - 3, now))
    assert "by this very run" in error.what


@pytest.mark.terraform
def test_the_account_roots_lock_has_its_own_unlock_form_and_a_dry_run(project, moto_reset):
    assert project.inv("iam.account").code == 0
    lock_by_someone_else(moto_reset, key=ACCOUNT_KEY)
    locked = project.inv("iam.account")
    assert locked.code == 75, locked.all
    assert f"inv iam.unlock --account --lock-id {LOCK_ID}" in locked.all
    looked = project.inv("-R", "iam.unlock", "--account", "--lock-id", LOCK_ID, "--yes")  # Invoke's --dry
    assert looked.code == 0, looked.all
    assert "alice@laptop-7" in looked.out and "released nothing" in looked.out
    assert held_locks(moto_reset) == [f"{BUCKET}/{ACCOUNT_KEY}"]
    released = project.inv("iam.unlock", "--account", "--lock-id", LOCK_ID, "--yes")
    assert released.code == 0, released.all
    assert held_locks(moto_reset) == []
    assert project.inv("iam.account").code == 0


@pytest.mark.terraform
def test_a_lock_taken_between_plan_and_apply_is_not_reported_as_a_partial_apply(proxied, proxy, moto_reset):
    lock_puts = []

    def take_the_lock_before_the_apply(request):
        if request.target.endswith(".PutItem") and b'"Info"' in request.body and STG_KEY.encode() in request.body:
            lock_puts.append(request)
            if len(lock_puts) == 2:  # the plan's lock, then the apply's: someone else gets there first
                lock_by_someone_else(moto_reset)

    proxy.before = take_the_lock_before_the_apply
    result = proxied.inv("iam.env", "--name", "stg")
    assert result.code == 75, result.all
    assert_user_error(result, "The apply to environment stg could not start", "nothing was applied", LOCK_ID)
    assert "partly updated" not in result.all
    assert parameters(moto_reset) == []


@pytest.mark.terraform
def test_lock_timeout_waits_for_a_run_in_progress(project, moto_reset):
    assert project.inv("iam.env", "--name", "stg").code == 0
    lock_by_someone_else(moto_reset)
    proc = start(project, "iam.env", "--name", "stg", "--lock-timeout-s", "120")
    time.sleep(8)
    assert proc.poll() is None, "gave up instead of waiting for the lock: " + "".join(proc.communicate())
    aws(moto_reset, "dynamodb").delete_item(TableName=TABLE, Key={"LockID": {"S": f"{BUCKET}/{STG_KEY}"}})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "-lock-timeout=120s" in err


# -- what a failed run leaves behind ---------------------------------------------------------------------


@pytest.mark.terraform
def test_errored_tfstate_is_recognised_and_its_advice_recovers(project, moto_reset, aws_env):
    assert project.inv("iam.env", "--name", "stg").code == 0
    s3 = aws(moto_reset, "s3")
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    state["serial"] += 1
    state["outputs"]["written_only_locally"] = {"value": "yes", "type": "string"}
    root = project.path / "roots" / "environment"
    (root / "errored.tfstate").write_text(json.dumps(state))  # what Terraform leaves when the state write fails

    refused = project.inv("iam.env", "--name", "stg")
    assert_user_error(refused, "errored.tfstate", "only copy of the new state", "terraform state push errored.tfstate")
    assert "commit or stash" not in refused.all
    assert git(project.path, "status", "--porcelain") == "", "errored.tfstate must be git-ignored"

    fix = re.search(r"Fix: (cd roots/environment && terraform state push errored\.tfstate[^\n]*)", refused.all).group(1)
    pasted = subprocess.run(["bash", "-c", fix.split("; then resume")[0]], cwd=project.path, env=project.env,
                            capture_output=True, text=True, timeout=180)  # the advice, pasted as it is
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    saved = json.loads(s3.get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read())
    assert saved["serial"] > state["serial"], "the pushed state was not the base of the next apply"
    assert "IAM for environment stg is applied" in pasted.stdout
    assert not (root / "errored.tfstate").exists()


@pytest.mark.terraform
def test_crash_log_is_recognised_with_its_own_advice(project):
    (project.path / "roots" / "environment" / "crash.log").write_text("panic: runtime error\n")
    refused = project.inv("iam.env", "--name", "stg")
    assert_user_error(refused, "crash.log", "Terraform crashed", "mv roots/environment/crash.log")
    assert "commit or stash" not in refused.all
    assert git(project.path, "status", "--porcelain") == "", "crash.log must be git-ignored"


@pytest.mark.terraform
def test_a_state_digest_mismatch_gets_the_exact_recovery(project, moto_reset):
    assert project.inv("iam.env", "--name", "stg").code == 0
    ddb = aws(moto_reset, "dynamodb")
    digest_item = {"LockID": {"S": f"{BUCKET}/{STG_KEY}-md5"}}
    ddb.put_item(TableName=TABLE, Item={**digest_item, "Digest": {"S": "0" * 32}})  # a state write cut short
    failed = project.inv("iam.env", "--name", "stg")
    body = aws(moto_reset, "s3").get_object(Bucket=BUCKET, Key=STG_KEY)["Body"].read()
    expected = hashlib.md5(body).hexdigest()
    assert_user_error(failed, "does not match its digest", "aws dynamodb put-item", TABLE,
                      f'"Digest": {{"S": "{expected}"}}', f"--endpoint-url {moto_reset}")
    assert "Terraform's own message is above" not in failed.all
    ddb.put_item(TableName=TABLE, Item={**digest_item, "Digest": {"S": expected}})  # what the command does
    assert project.inv("iam.env", "--name", "stg").code == 0


# -- plan files -------------------------------------------------------------------------------------------


@pytest.mark.terraform
def test_plan_json_is_private_and_gone_after_the_apply(proxied, proxy, moto_reset):
    proxy.hold, proxy.hold_s = state_write, 2
    proc = start(proxied, "iam.env", "--name", "stg")
    wait_until_held(proxy, proc)
    plan_json = proxied.path / PLAN_JSON
    assert plan_json.exists()
    assert plan_json.stat().st_mode & 0o777 == 0o600
    assert (proxied.path / PLAN_JSON.removesuffix(".json")).stat().st_mode & 0o777 == 0o600
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    assert not plan_json.exists() and not (proxied.path / PLAN_JSON.removesuffix(".json")).exists()
    record = json.loads(aws(moto_reset, "ssm").get_parameter(Name="/acme-api/iam/env/stg")["Parameter"]["Value"])
    assert record["outputs"]["lambda_role_names"] == ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]


# -- the script's own failures --------------------------------------------------------------------------


@pytest.mark.terraform
def test_a_script_failure_is_not_reported_as_a_terraform_failure(project):
    script = "iam/terraform/bin/deploy-app.sh"
    # a Windows-style checkout of a commit without .gitattributes: CRLF on disk, git status clean
    git(project.path, "rm", "-q", ".gitattributes")
    git(project.path, "commit", "-q", "-m", "no .gitattributes")
    git(project.path, "push", "-q")
    git(project.path, "config", "core.autocrlf", "true")
    (project.path / script).unlink()
    git(project.path, "checkout", "--", script)
    assert b"\r\n" in (project.path / script).read_bytes()
    result = project.inv("iam.env", "--name", "stg")
    # found before anything runs, and never blamed on Terraform
    assert_user_error(result, "CR (Windows) line endings", "before Terraform runs")
    assert "Terraform's own message is above" not in result.all and "deploy-app.sh: root module" not in result.all
    fix = re.search(r"Fix: (git config core.autocrlf input && rm -f \S+ && git checkout -- \S+)", result.all).group(1)
    subprocess.run(["bash", "-c", fix], cwd=project.path, check=True)  # the advice, pasted as it is
    assert project.inv("iam.env", "--name", "stg").code == 0
