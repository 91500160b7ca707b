"""Fast unit tests of the pure logic: no subprocess, no AWS, no network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runbook.errors import Interrupted, RunbookError
from runbook.plan import Decision, Plan, Step
from runbook.terraform import satisfies

# -- Terraform version constraints (https://developer.hashicorp.com/terraform/language/expressions/version-constraints)


@pytest.mark.parametrize("version, constraint, expected", [
    ("1.0.3", ">= 1.0.0", True),
    ("1.0.3", "> 1.0.3", False),
    ("1.0.3", "= 1.0.3", True),
    ("1.0.3", "1.0.3", True),
    ("1.0.3", "!= 1.0.3", False),
    ("1.11.4", "~> 1.0", True),       # >= 1.0, < 2.0
    ("2.0.0", "~> 1.0", False),
    ("1.0.9", "~> 1.0.3", True),      # >= 1.0.3, < 1.1.0
    ("1.1.0", "~> 1.0.3", False),
    ("1.10.0", ">= 1.9, < 1.11", True),
    ("1.11.4", ">= 1.9, < 1.11", False),
])
def test_version_constraints(version, constraint, expected):
    assert satisfies(version, constraint) is expected


@pytest.mark.parametrize("ours, written, refused", [
    ("1.0.3", "1.11.4", True), ("1.11.3", "1.11.4", True), ("1.11.4", "1.11.4", False), ("1.11.4", "1.0.3", False),
    ("1.0.3", None, False), ("1.0.3", "not-a-version", False), ("1.10.0", "1.10.0-beta1", False)])
def test_a_terraform_older_than_the_states_writer_is_refused(ours, written, refused):
    from runbook.terraform import check_state_version

    if refused:
        with pytest.raises(RunbookError, match=f"last written by Terraform {written}.*install Terraform {written}"):
            check_state_version(ours, written, where="s3://b/k")
    else:
        check_state_version(ours, written, where="s3://b/k")


@pytest.mark.parametrize("lock, version, refused", [
    ("dynamodb", "1.0.3", False), ("s3", "1.0.3", True), ("s3", "1.9.8", True), ("s3", "1.10.0", False),
    ("dynamodb+s3", "1.9.8", True), ("dynamodb+s3", "1.11.4", False)])
def test_a_lock_mode_needs_its_terraform(lock, version, refused):
    from runbook.config import Backend
    from runbook.terraform import check_lock_mode

    backend = Backend(bucket="b", key="k", lock_table="t", region="eu-west-1", lock=lock)
    if refused:
        with pytest.raises(RunbookError, match="needs Terraform 1.10.0 or later"):
            check_lock_mode(version, backend)
    else:
        check_lock_mode(version, backend)


@pytest.mark.parametrize("constraint", ["latest", ">= one", "~>", "1.0.0.0.0 <"])
def test_unreadable_constraint_is_a_user_error(constraint):
    with pytest.raises(RunbookError, match="Cannot read the Terraform version constraint"):
        satisfies("1.0.3", constraint)


# -- Plan: the runbook as data --------------------------------------------------------------


class Recorder(Step):
    def __init__(self, title, log, *, needed=True, preflight=False, fail=None, interrupt=False):
        self.title, self.log, self.needed, self.preflight = title, log, needed, preflight
        self.fail, self.interrupt = fail, interrupt

    def check(self, ctx):
        self.log.append(("check", self.title))
        if self.fail == "check":
            raise RunbookError(f"{self.title} found a problem", id="config-invalid", fix="fix it")
        return Decision(self.needed, f"{self.title} reason")

    def run(self, ctx):
        self.log.append(("run", self.title))
        if self.interrupt:
            raise KeyboardInterrupt
        if self.fail == "run":
            raise RunbookError(f"{self.title} failed", id="plan-failed", fix="repair it")
        return f"{self.title} done"


def test_plan_runs_in_order_skips_what_is_not_needed_and_checks_preflight_once(capsys):
    log = []
    plan = Plan("test", [Recorder("pre", log, preflight=True), Recorder("skip", log, needed=False),
                         Recorder("act", log)], resume="inv again")
    outcomes = plan.run(None)
    assert [(o.title, o.status) for o in outcomes] == [("pre", "done"), ("skip", "skipped"), ("act", "done")]
    assert log == [("check", "pre"), ("check", "skip"), ("check", "act"), ("run", "act")]


def test_plan_stops_at_the_first_failure_and_adds_the_resume_command():
    log = []
    plan = Plan("test", [Recorder("a", log), Recorder("b", log, fail="run"), Recorder("c", log)], resume="inv again")
    with pytest.raises(RunbookError) as caught:
        plan.run(None)
    assert ("check", "c") not in log
    assert caught.value.fix == "repair it; then resume with `inv again`"
    assert [o.status for o in plan.outcomes] == ["done", "failed"]


def test_plan_turns_ctrl_c_into_an_interrupted_error_naming_the_step():
    log = []
    plan = Plan("test", [Recorder("a", log), Recorder("b", log, interrupt=True)], resume="inv again")
    with pytest.raises(Interrupted) as caught:
        plan.run(None)
    assert "step 2/2 (b)" in caught.value.what and caught.value.code == 130


def test_dry_run_collects_every_finding_and_runs_nothing(capsys):
    log = []
    plan = Plan("test", [Recorder("pre1", log, preflight=True, fail="check"),
                         Recorder("pre2", log, preflight=True, fail="check"), Recorder("act", log)], resume="inv x")
    findings = plan.dry_run(None)
    assert [f.what for f in findings] == ["pre1 found a problem", "pre2 found a problem"]
    assert not [entry for entry in log if entry[0] == "run"]
    assert "To run it for real: inv x" in capsys.readouterr().out


# -- the one-paragraph message -------------------------------------------------------------


def test_error_message_is_what_where_fix():
    error = RunbookError("Bad thing", id="config-invalid", where="config/environments.yml line 3, field project",
                         fix="edit it")
    assert error.message == "Bad thing. Where: config/environments.yml line 3, field project. Fix: edit it"


@pytest.mark.parametrize("fix, expected", [
    ("fix what Terraform reports, then run the same command again",
     "fix what Terraform reports, then resume with `inv iam.env --name stg --skip-branch-check`"),
    ("aws sso login --profile p  (then run the command again)",
     "aws sso login --profile p  (then resume with `inv iam.env --name stg --skip-branch-check`)"),
    ("run the same command again: it plans afresh from the saved state",
     "Resume with `inv iam.env --name stg --skip-branch-check`: it plans afresh from the saved state"),
    ("git pull --ff-only", "git pull --ff-only; then resume with `inv iam.env --name stg --skip-branch-check`"),
    (None, "Then resume with `inv iam.env --name stg --skip-branch-check`"),
])
def test_resume_command_is_named_once_with_the_flags_given(fix, expected):
    class Failing(Step):
        title = "s"

        def run(self, ctx):
            raise RunbookError("it failed", id="plan-failed", fix=fix)

    plan = Plan("test", [Failing()], resume="inv iam.env --name stg --skip-branch-check")
    with pytest.raises(RunbookError) as caught:
        plan.run(None)
    assert caught.value.fix == expected
    assert caught.value.message.count("inv iam.env") == 1


def test_run_command_repeats_the_flags_the_user_gave():
    from runbook import config, iam
    from runbook.scopes import Scope

    cfg = config.load(config.DEFAULT_CONFIG)
    stg = cfg.environments["stg"]
    run = iam.IamRun(cfg, Scope.of_environment(cfg, stg), stg, assume_yes=True, skip_branch_check=True)
    assert run.command == "inv iam.env --name stg --yes --skip-branch-check"
    account = iam.IamRun(cfg, Scope.of_account(cfg, stg.account), stg)
    assert account.command == "inv iam.account --env stg"


# -- Terraform failures told apart ------------------------------------------------------------

DENIED = """
Error: Error acquiring the state lock

Error message: 2 errors occurred:
	* AccessDeniedException: User: arn:aws:iam::123456789012:user/ci is not authorized to perform: dynamodb:PutItem
deploy-app.sh: error: terraform plan could not take the state lock
"""
HELD = DENIED.replace("Error message: 2 errors occurred:", """Lock Info:
  ID:        4f2b9c1e-0000-4000-8000-000000000000
  Path:      acme-api-tfstate-123456789012/acme-api/iam/env/stg.tfstate
  Operation: OperationTypeApply
  Who:       alice@laptop
  Version:   1.0.3
  Created:   2026-11-30 08:01:02.5 +0000 UTC""")
ENV = {"TF_VAR_environment": "stg", "TF_LOCK_TABLE": "acme-api-tf-locks", "TF_STATE_BUCKET": "b", "TF_STATE_KEY": "k"}


def test_a_lock_table_that_cannot_be_used_is_not_reported_as_held_by_another_run(tmp_path):
    from runbook import terraform

    error = terraform.failure(tmp_path, ENV, what="plan of environment stg", code=75, output=DENIED)
    assert error.id == "state-lock-failed" and error.code == 1
    assert "no other run holds it" in error.what and "unlock" not in (error.fix or "")


def held_by_this_machine(created: float) -> str:
    import getpass
    import socket

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created)) + ".893271922 +0000 UTC"
    return (HELD.replace("alice@laptop", f"{getpass.getuser()}@{socket.gethostname()}")
            .replace("Version:   1.0.3", "Version:   1.11.4").replace("2026-11-30 08:01:02.5 +0000 UTC", stamp))


def test_a_lock_this_very_run_took_is_named_as_such_not_as_another_runs():
    """Terraform's lock write succeeded, its answer was lost, the SDK's retry found Terraform's own lock
    (seen with Terraform 1.11.4 against a local AWS under load): the message must not send the administrator
    looking for a colleague's run."""
    from runbook import terraform

    now = time.time()
    env = {**ENV, "DEPLOY_MODE": "apply", "TERRAFORM_VERSION": "1.11.4"}
    output = held_by_this_machine(now - 1)
    error = terraform.failure(Path("."), env, what="apply to environment stg", code=75, output=output,
                              ran=(now - 3, now))
    assert error.id == "state-lock-held" and error.code == 75
    assert "by this very run" in error.what and "nothing was applied" in error.what
    assert "pgrep -a terraform" in error.fix
    assert "inv iam.unlock --env stg --lock-id 4f2b9c1e-0000-4000-8000-000000000000" in error.fix
    # Taken before this command started Terraform, or by another operation or version: another run's.
    for other_env, ran in ((env, (now + 5, now + 9)), ({**env, "DEPLOY_MODE": "plan"}, (now - 3, now)),
                           ({**env, "TERRAFORM_VERSION": "1.0.3"}, (now - 3, now))):
        error = terraform.failure(Path("."), other_env, what="apply to environment stg", code=75, output=output,
                                  ran=ran)
        assert "locked by another run" in error.what and "very run" not in error.what


def test_a_lock_held_by_another_run_names_who_and_how_to_release_it(tmp_path):
    from runbook import terraform

    error = terraform.failure(tmp_path, ENV, what="plan of environment stg", code=75, output=HELD)
    assert error.id == "state-lock-held" and error.code == 75
    assert "alice@laptop" in error.what
    assert "inv iam.unlock --env stg --lock-id 4f2b9c1e-0000-4000-8000-000000000000" in error.fix
