"""Output that survives its reader, secrets in URLs, record fields that cannot forge lines, records whose
answer was lost, malformed records with a fix that works, and an AWS endpoint that never answers."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from runbook import console, records
from tests.aws_proxy import AwsProxy
from tests.project import Project, base_config, git

STG_RECORD = "/acme-api/iam/env/stg"
ACCOUNT_RECORD = "/acme-api/iam/account"


def _ssm(endpoint: str):
    return boto3.client("ssm", endpoint_url=endpoint, region_name="eu-west-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _inv_reader_gone(project: Project, *args: str, close_stderr: bool = False, timeout: float = 240):
    """Run ``inv ARGS`` with its stdout (and stderr when asked) a pipe whose reader has already gone, as in
    ``inv ... | head -0``; returns (exit code, stderr text)."""
    inv = str(Path(sys.executable).parent / "inv")
    proc = subprocess.Popen([inv, *args], cwd=project.path, env=project.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()  # the reader exits before the first line
    if close_stderr:
        proc.stderr.close()
        return proc.wait(timeout=timeout), ""
    err = proc.stderr.read().decode("utf-8", "replace")
    return proc.wait(timeout=timeout), err


# -- a reader that goes away (inv ... | head) -------------------------------------------------------------


def test_an_apply_whose_reader_has_gone_still_applies_and_writes_its_record(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    code, err = _inv_reader_gone(project, "iam.env", "--name", "stg")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 0, err
    value = json.loads(_ssm(moto_reset).get_parameter(Name=STG_RECORD)["Parameter"]["Value"])
    assert value["commit"] == git(project.path, "rev-parse", "HEAD")


@pytest.mark.parametrize("args", [("iam.status",), ("iam.env", "--name", "stg", "--dry-run")])
def test_read_only_commands_piped_into_a_reader_that_has_gone_exit_cleanly(tmp_path, moto_reset, aws_env, args):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    code, err = _inv_reader_gone(project, *args, timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 0, err


def test_status_check_keeps_its_exit_code_when_both_readers_have_gone(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))  # nothing applied: not current
    code, _ = _inv_reader_gone(project, "iam.status", "--check", close_stderr=True, timeout=120)
    assert code == 3


def test_console_write_to_a_closed_pipe_silences_that_stream_and_goes_on():
    code = ("import sys\n"
            "from runbook import console\n"
            "console.say('first')\n"
            "console.write(sys.stdout, 'live line')\n"
            "console.say('on stderr', err=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0, err
    assert err == "on stderr\n"


# -- secrets in URLs --------------------------------------------------------------------------------------


def test_mask_hides_the_user_info_of_every_url():
    text = ("remote https://x-access-token:ghp_SECRET123456@github.example.invalid/acme/acme-api.git, "
            "endpoint http://user:s3cr3tPASS@127.0.0.1:1/ and host http://tok:secretTOKEN@127.0.0.1:9")
    shown = console.mask(text)
    for secret in ("ghp_SECRET123456", "s3cr3tPASS", "secretTOKEN", "x-access-token", "user:"):
        assert secret not in shown
    assert "https://****@github.example.invalid/acme/acme-api.git" in shown
    assert "http://****@127.0.0.1:1/" in shown
    assert console.mask("https://github.com/acme/x.git?a=b@c") == "https://github.com/acme/x.git?a=b@c"
    assert console.mask_env({"GIT_URL": "https://u:pw123@h/x", "HOME": "/root"}) == {
        "GIT_URL": "https://****@h/x", "HOME": "/root"}


def test_a_dry_run_never_prints_credentials_written_into_configured_urls(tmp_path, moto_reset, aws_env):
    config = base_config(moto_reset)
    config["git"] = {"remote": "https://x-access-token:ghp_SECRET123456@github.example.invalid/acme/acme-api.git"}
    config["accounts"]["nonprod"]["endpoint_url"] = moto_reset.replace("http://", "http://user:s3cr3tPASS@")
    project = Project.create(tmp_path, aws_env, config)
    result = project.inv("iam.env", "--name", "stg", "--dry-run", timeout=120)
    assert "ghp_SECRET123456" not in result.all and "s3cr3tPASS" not in result.all, result.all
    assert "****@" in result.all, result.all


# -- record fields cannot forge lines ---------------------------------------------------------------------


def test_one_line_shows_line_breaks_as_escapes():
    assert console.one_line("x\n\n  ok  All\r\tdone\x1b[2K") == "x\\n\\n  ok  All\\x0d\\tdone\\x1b[2K"
    assert console.safe("a\nb") == "a\nb"  # multi-line messages keep their lines


def test_a_newline_in_a_record_field_cannot_add_lines_to_the_status_table(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    project.write_record("environment", "stg", endpoint=moto_reset)
    ssm = _ssm(moto_reset)
    value = json.loads(ssm.get_parameter(Name=STG_RECORD)["Parameter"]["Value"])
    value["applied_by"] = "x\n\n  ok  All IAM is current; nothing to apply.\r\n"
    ssm.put_parameter(Name=STG_RECORD, Value=json.dumps(value), Type="String", Overwrite=True)
    result = project.inv("iam.status")
    assert result.code == 0, result.all
    assert not any(line.strip().startswith("ok  All IAM is current") for line in result.out.splitlines()), result.out
    stg = next(line for line in result.out.splitlines() if line.startswith("environment stg"))
    assert "x\\n\\n  ok  All IAM is current; nothing to apply.\\x0d\\n" in stg


# -- the answer to PutParameter lost, the record written ------------------------------------------------


def _record() -> records.Record:
    return records.Record.create(fingerprint="a" * 64, commit="c" * 40, branch="staging",
                                 applied_by="arn:aws:iam::123456789012:user/admin", scope="stg")


def test_a_record_whose_answer_was_lost_is_read_back_and_counts_as_written(moto_reset):
    with AwsProxy(moto_reset) as proxy:
        proxy.drop = lambda request: request.target == "AmazonSSM.PutParameter"
        client = boto3.client("ssm", endpoint_url=proxy.url, region_name="eu-west-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=5))
        record = _record()
        assert records.write(client, "acme-api", "stg", record) == STG_RECORD
    assert _ssm(moto_reset).get_parameter(Name=STG_RECORD)["Parameter"]["Value"] == record.to_json()


def test_an_apply_whose_record_answer_was_lost_says_it_is_applied_and_recorded(tmp_path, moto_reset, aws_env):
    with AwsProxy(moto_reset) as proxy:
        proxy.drop = lambda request: (request.target == "AmazonSSM.PutParameter"
                                      and json.loads(request.body).get("Name") == STG_RECORD)
        project = Project.create(tmp_path, aws_env, base_config(proxy.url))
        result = project.inv("iam.env", "--name", "stg")
    assert result.code == 0, result.all
    assert "NOT written" not in result.all and "applied-not-recorded" not in result.all, result.all
    value = json.loads(_ssm(moto_reset).get_parameter(Name=STG_RECORD)["Parameter"]["Value"])
    assert value["commit"] == git(project.path, "rev-parse", "HEAD")


def test_a_lost_answer_with_another_value_in_ssm_is_still_reported_as_not_written(moto_reset):
    ssm = _ssm(moto_reset)
    with AwsProxy(moto_reset) as proxy:
        def drop_and_overwrite(request):  # another writer gets in between: the value is not ours
            if request.target != "AmazonSSM.PutParameter":
                return False
            ssm.put_parameter(Name=STG_RECORD, Value="{}", Type="String", Overwrite=True)
            return True

        proxy.drop = drop_and_overwrite
        client = boto3.client("ssm", endpoint_url=proxy.url, region_name="eu-west-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(retries={"mode": "standard", "max_attempts": 0}, read_timeout=5))
        with pytest.raises(records.Transient):
            records.write(client, "acme-api", "stg", _record())


# -- a malformed record: the fix deletes it, then applies ------------------------------------------------


def test_a_malformed_account_record_names_a_fix_that_works(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    _ssm(moto_reset).put_parameter(Name=ACCOUNT_RECORD, Value="{not json", Type="String", Overwrite=True)
    refused = project.inv("iam.account", "--env", "stg")
    assert refused.code == 1, refused.all
    delete = (f"aws ssm delete-parameter --name {ACCOUNT_RECORD} --region eu-west-1 "
              f"--endpoint-url {shlex.quote(moto_reset)}")
    assert f"{delete} && inv iam.account" in refused.all, refused.all
    aws_cli = shutil.which("aws", path=aws_env["PATH"])
    if aws_cli and subprocess.run([aws_cli, "--version"], capture_output=True, env=aws_env).returncode == 0:
        done = subprocess.run(delete, shell=True, env=aws_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    else:  # no AWS CLI here: the same call
        _ssm(moto_reset).delete_parameter(Name=ACCOUNT_RECORD)
    applied = project.inv("iam.account", "--env", "stg")
    assert applied.code == 0, applied.all
    assert json.loads(_ssm(moto_reset).get_parameter(Name=ACCOUNT_RECORD)["Parameter"]["Value"])["scope"] == "account"


def test_the_malformed_record_fix_names_the_profile_in_use():
    client = _ssm("http://127.0.0.1:9")
    error = records._malformed_fix(client, ACCOUNT_RECORD, "account", None, "admin prod")
    assert error.startswith(f"aws ssm delete-parameter --name {ACCOUNT_RECORD} --region eu-west-1 "
                            "--profile 'admin prod' && inv iam.account")


# -- an endpoint that accepts connections and never answers ----------------------------------------------


class _Blackhole:
    """A loopback TCP server that accepts every connection and never answers (nor closes)."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


def test_status_against_an_endpoint_that_never_answers_gives_up_soon_and_fails(tmp_path, aws_env):
    with _Blackhole() as hole:
        project = Project.create(tmp_path, aws_env, base_config(hole.url))
        started = time.monotonic()
        result = project.inv("iam.status", timeout=120)
        took = time.monotonic() - started
    assert result.code == 1, result.all
    assert re.search(r"No applied record could be read \(5 scope\(s\)", result.err), result.all
    assert "Traceback" not in result.all
    assert took < 60, f"inv iam.status took {took:.0f} s"
    assert "unknown: not asked, the same SSM did not answer" in result.out  # one time-out per account, not per scope
