"""The pipeline's gate (with SSM and IAM stubbed, a fake clock), the console's masking, the task layer's rules."""

from __future__ import annotations

import io
import json
import signal
from dataclasses import replace

import pytest

from runbook import aws, console, gate, iam
from runbook.errors import EXIT_BUG, RunbookError
from runbook.scopes import for_environment
from runbook.tasks import _common
from tests.unit.conftest import TREES
from tests.unit.test_records_and_aws import record
from tests.unit.test_terraform_and_backend import FakeSession

LAMBDA = {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}


@pytest.mark.parametrize("statements, trusted", [
    ([LAMBDA], True), ([{**LAMBDA, "Action": ["sts:AssumeRole", "sts:TagSession"]}], True),
    ([{**LAMBDA, "Principal": {"Service": "ec2.amazonaws.com"}}], False),
    ([LAMBDA, {**LAMBDA, "Effect": "Deny"}], False), ([], False),
])
def test_a_role_trusts_lambda_only_by_an_allow_and_no_deny(statements, trusted):
    assert gate._trusts_lambda({"Version": "2012-10-17", "Statement": statements}) is trusted
    assert gate._trusts_lambda(json.dumps({"Statement": statements}).replace(" ", "%20")) is trusted


@pytest.mark.parametrize("outputs, names, problem", [
    ({"lambda_role_names": ["a", "b"]}, ["a", "b"], None), ({}, [], "has no lambda_role_names output"),
    ({"lambda_role_names": "a"}, [], "is not a list of role names"),
])
def test_the_roles_come_from_the_environments_record(outputs, names, problem):
    found, wrong = gate.recorded_roles({"outputs": outputs})
    assert found == names and (wrong is None if problem is None else problem in wrong)


class Clock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def current(cfg, scope, roles=("acme-api-stg-lambda-api",)) -> str:
    return record(fingerprint=scope.fingerprint(TREES), scope=scope.name,
                  outputs={"lambda_role_names": list(roles)} if scope.environment else {}).to_json()


def test_the_gate_waits_for_the_records_then_checks_the_roles_and_opens(cfg, stub, capsys):
    account, env = for_environment(cfg, cfg.environments["stg"])
    ssm, ssm_stub = stub("ssm")
    iam_client, iam_stub = stub("iam")
    ssm_stub.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)      # poll 1: not applied
    ssm_stub.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
    ssm_stub.add_client_error("get_parameter", "ThrottlingException", http_status_code=400)   # poll 2: throttled
    for scope in (account, env):                                                                # poll 3: applied
        ssm_stub.add_response("get_parameter", {"Parameter": {"Value": current(cfg, scope)}})
    iam_stub.add_response("get_role", {"Role": {"RoleName": "acme-api-stg-lambda-api", "Path": "/", "RoleId": "r" * 16,
                                                "Arn": "arn:aws:iam::123456789012:role/x", "CreateDate": "2026-01-01",
                                                "AssumeRolePolicyDocument": json.dumps({"Statement": [LAMBDA]})}})
    clock = Clock()
    result = gate.wait(cfg, cfg.environments["stg"], timeout_s=600, poll_s=15, settle_s=5,
                       session=FakeSession({"ssm": ssm, "iam": iam_client}), sleep=clock.sleep, clock=clock,
                       trees=TREES)
    out = capsys.readouterr().out
    assert result.polls == 2 and clock.slept == [15, 30, 5]  # a throttled poll doubles the wait
    assert out.count("Waiting: the IAM for this commit is not applied yet") == 1
    assert "run: inv iam.account --env stg" in out and "IAM gate open for stg" in out


def test_the_gate_gives_up_at_its_deadline_naming_the_rerun(cfg, stub):
    ssm, ssm_stub = stub("ssm")
    for _ in range(4):
        ssm_stub.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
    clock = Clock()
    with pytest.raises(RunbookError) as caught:
        gate.wait(cfg, cfg.environments["stg"], timeout_s=20, poll_s=15, settle_s=0,
                  session=FakeSession({"ssm": ssm}), sleep=clock.sleep, clock=clock, trees=TREES)
    assert caught.value.id == "gate-timeout" and "inv ci.rerun --env stg" in caught.value.fix
    assert clock.now == 20  # polled right up to the deadline


def test_a_gate_refused_the_records_stops_at_once_naming_the_deployer(cfg, stub):
    ssm, ssm_stub = stub("ssm")
    ssm_stub.add_client_error("get_parameter", "AccessDeniedException", http_status_code=400)
    with pytest.raises(RunbookError) as caught:
        gate.wait(cfg, cfg.environments["stg"], session=FakeSession({"ssm": ssm}), sleep=lambda s: None,
                  trees=TREES)
    assert caught.value.id == "aws-access-denied" and "/acme-api/iam/*" in caught.value.fix


def test_a_settle_time_as_long_as_the_timeout_is_refused(cfg):
    with pytest.raises(RunbookError, match="must be smaller than --timeout-s"):
        gate.wait(cfg, cfg.environments["stg"], timeout_s=10, settle_s=10, trees=TREES)


def test_secrets_are_masked_and_placeholders_are_not(monkeypatch):
    monkeypatch.setenv("CIRCLECI_TOKEN", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # a placeholder of a local AWS: an ordinary word
    text = console.mask("token 0123456789abcdef0123456789abcdef01234567 for testing at https://u:p@host/x")
    assert text == "token **** for testing at https://****@host/x"


def test_outside_text_cannot_drive_the_terminal():
    assert console.safe("a\x1b[2Jb\u202ec\n") == "a\\x1b[2Jb\\u202ec\n"
    assert console.one_line("a\nb\tc") == "a\\nb\\tc"
    assert console.scrub("key AKIAIOSFODNN7EXAMPLE password=hunter2 \x1b[31mred") == "key **** password=**** red"


def test_a_closed_pipe_silences_output_without_stopping_the_run():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    console.write(Closed(), "still running\n")  # no exception


def test_the_resume_command_is_named_once():
    assert iam.with_resume("fix it, then run the same command again", "inv iam.env --name stg") == \
        "fix it, then resume with `inv iam.env --name stg`"
    assert iam.with_resume("git pull", "inv x") == "git pull; then resume with `inv x`"
    assert iam.with_resume(None, "inv x") == "Then resume with `inv x`"
    assert iam.with_resume("run inv x again", "inv x") == "run inv x again"


@pytest.mark.parametrize("value, ok", [("300", 300.0), (None, 5.0), ("2.5", 2.5), (".5", 0.5), ("1e3", 1000.0),
                                        ("1e9", None), ("nan", None), ("-1", None), ("five", None), ("", None),
                                        (" 5", None), ("1_000", None), ("\u0663", None), ("\uff11\uff10", None),
                                        ("inf", None), ("0x10", None)])
def test_seconds_flags_are_numbers_within_bounds(value, ok):
    if ok is None:
        with pytest.raises(RunbookError, match="takes a number of seconds"):
            _common.seconds(value, "--poll-s", 5)
    else:
        assert _common.seconds(value, "--poll-s", 5) == ok


def test_ctrl_c_outside_an_iam_step_ends_with_its_id_and_section():
    from types import SimpleNamespace

    from invoke import Exit

    @_common.user_errors
    def status(c):
        raise KeyboardInterrupt  # a watch or a look-up stopped by Ctrl-C: no step turned it into Interrupted

    with pytest.raises(Exit) as caught:
        status(SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(dry=False))))
    assert caught.value.code == 130  # it printed only "Interrupted (Ctrl-C).", without the id and the section
    assert caught.value.message == "ERROR [interrupted]: Interrupted (Ctrl-C).\nSee TROUBLESHOOTING.md#interrupted"


def test_a_signal_gives_128_plus_its_number():
    assert _common._signal_exit([signal.SIGTERM], 130) == (143, "stopped by SIGTERM: ")
    assert _common._signal_exit([], 75) == (75, "")


def test_a_defect_says_so_with_its_own_exit_code_and_how_to_report_it():
    try:
        {}["missing"]
    except KeyError as exc:
        text = _common._defect(exc)
    assert text.startswith("ERROR [defect]: The runbook failed with KeyError at test_gate_console_tasks.py line")
    assert "RUNBOOK_DEBUG=1" in text and EXIT_BUG == 70


def test_an_unnamed_aws_failure_keeps_its_code_and_message():
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": "WeirdError", "Message": "something odd"}}, "GetThing")
    assert "WeirdError: something odd" in _common._defect(exc)


NOT_A_CHECKOUT = "fatal: not a git repository (or any of the parent directories): .git"
UNBORN_STATUS = "# branch.oid (initial)\0# branch.head staging\0? config/\0"
USAGE = ("fatal: ambiguous argument 'HEAD': unknown revision or path not in the working tree.\nUse '--' to separate "
         "paths from revisions, like this:\n'git <command> [<revision>...] -- [<file>...]'")


def fake_git(status: str | None):
    """git as it answers outside a checkout (*status* None) or in one whose branch has no commit (its status)."""
    from runbook import git

    def run(*args, **kwargs):
        if status is None or args[0] != "status":
            raise git.GitCommandError(args, NOT_A_CHECKOUT if status is None else USAGE)
        return status

    return run


@pytest.mark.parametrize("status, expected", [(None, "ERROR [not-a-git-checkout]"), (UNBORN_STATUS,
                                                                                    "ERROR [no-commit-yet]")])
@pytest.mark.parametrize("task, flags", [("release", {"dry_run": True}), ("ci.status", {}), ("ci.diagnose", {}),
                                         ("ci.approve", {}), ("ci.rerun", {}), ("iam.status", {}),
                                         ("iam.account", {"dry_run": True}), ("iam.env", {"dry_run": True}),
                                         ("iam.bootstrap", {"dry_run": True}), ("iam.unlock", {})])
def test_a_task_names_a_missing_checkout_or_commit_not_a_detached_head(monkeypatch, tmp_path, status, expected,
                                                                      task, flags):
    from invoke import Context, Exit

    from runbook import git
    from runbook.tasks import namespace
    from tests.unit.conftest import write_config

    monkeypatch.setenv("RUNBOOK_CONFIG", str(write_config(tmp_path)))
    monkeypatch.setattr(git, "_git", fake_git(status))
    with pytest.raises(Exit) as stopped:
        namespace()[task].body(Context(), **flags)
    message = str(stopped.value.message)
    assert message.startswith(expected) and "detached" not in message and "Use '--'" not in message
    assert "git commit" in message if status else "cd into your clone" in message


def test_a_task_given_its_environment_reads_no_checkout(monkeypatch, cfg):
    from runbook import git

    monkeypatch.setattr(git, "_git", fake_git(None))
    assert _common.pick_environment(cfg, "stg").name == "stg"


@pytest.mark.parametrize("deployer", ["oidc", "user"])
@pytest.mark.parametrize("error_id", ["aws-no-credentials", "aws-credentials-rejected", "aws-access-denied"])
def test_the_gates_advice_is_for_the_configured_deployer_only(cfg, error_id, deployer):
    config = replace(cfg, circleci=replace(cfg.circleci, deployer=deployer))
    fix = gate._in_the_pipeline(RunbookError("x", id=error_id, fix="aws sso login"), config, cfg.environments["stg"])
    assert fix.endswith("then rerun the job (inv ci.rerun --env stg)") and "sso" not in fix
    legacy = {"aws-no-credentials": "AWS_ACCESS_KEY_ID", "aws-credentials-rejected": "access key",
              "aws-access-denied": "CI deployer user"}[error_id]
    assert (legacy in fix) == (deployer == "user")  # the key-based hints only for the legacy deployer
    if deployer == "oidc":
        assert "AWS_ACCESS_KEY_ID" not in fix and "access key" not in fix


def test_a_tokens_claims_are_read_never_the_token(tmp_path, monkeypatch):
    import base64

    def part(data) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    token = tmp_path / "token"
    token.write_text(f"{part({'alg': 'RS256'})}.{part({'aud': 'org', 'sub': 'org/o/project/p', 'x': 1})}.sig")
    assert aws.token_claims(str(token)) == {"aud": "org", "sub": "org/o/project/p"}
    token.write_text(f"{part({'alg': 'RS256'})}.{part({'aud': ['org', 'other'], 'sub': 's'})}.sig")
    assert aws.token_claims(str(token))["aud"] == "org, other"  # a list of audiences, shown once, not as repr
    for text in ("", "not-a-jwt", "a.!!!.c", f"a.{part(['list'])}.c"):
        token.write_text(text)
        assert aws.token_claims(str(token)) == {}
    assert aws.token_claims(str(tmp_path / "missing")) == {}


def test_a_notification_that_cannot_name_its_commit_never_stops_the_gate(cfg, stub, monkeypatch):
    def no_git():
        raise RunbookError("not a checkout", id="not-a-git-checkout")

    monkeypatch.delenv("CIRCLE_SHA1", raising=False)
    monkeypatch.setattr(gate.git, "head_commit", no_git)
    ssm, ssm_stub = stub("ssm")
    for _ in range(4):
        ssm_stub.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
    told, clock = [], Clock()
    with pytest.raises(RunbookError) as caught:
        gate.wait(cfg, cfg.environments["stg"], timeout_s=20, poll_s=15, settle_s=0, session=FakeSession({"ssm": ssm}),
                  sleep=clock.sleep, clock=clock, trees=TREES, notify=told.append)
    assert caught.value.id == "gate-timeout"  # the gate's own verdict
    assert told[0].startswith("IAM gate for stg at commit ?: WAITING") and "GAVE UP" in told[1]
