"""The dry run's verdict and document, and the JSON printer every ``--json`` uses (no subprocess, no server)."""

from __future__ import annotations

import json

import pytest

from runbook.decide import Action
from runbook.errors import EXIT_WOULD_STOP, RunbookError
from runbook.iam import DryRun
from runbook.tasks._common import dry_run_only, for_a_person, print_json

ACTIONS = [Action("plan", "Terraform: plan (environment stg)", "decided at run time",
                  lines=("cd /tmp/snap && ../bin/deploy-app.sh stg", "env: TF_STATE_KEY=k", "credentials: profile x"))]
WRONG_BRANCH = RunbookError("The checkout is on branch 'main'", id="wrong-branch", where="HEAD",
                            fix="git checkout staging")


def test_a_dry_run_without_findings_goes_ahead_and_one_with_findings_exits_4_naming_them():
    DryRun(ACTIONS, [], "inv iam.env --name stg").check()
    with pytest.raises(RunbookError) as raised:
        DryRun(ACTIONS, [WRONG_BRANCH, WRONG_BRANCH], "inv iam.env --name stg --yes").check()
    error = raised.value
    assert (error.id, error.code, EXIT_WOULD_STOP) == ("dry-run-findings", 4, 4)
    assert "2 finding(s) that would stop a real run (wrong-branch; listed above)" in error.what
    assert error.fix.endswith("then run it again: inv iam.env --name stg --yes --dry-run")


def test_the_dry_run_document_shows_what_the_screen_shows():
    quiet = DryRun(ACTIONS, [WRONG_BRANCH], "inv iam.env --name stg").document()
    assert quiet["would_stop"] and quiet["findings"] == [
        {"id": "wrong-branch", "what": "The checkout is on branch 'main'", "where": "HEAD",
         "fix": "git checkout staging"}]
    assert quiet["actions"][0]["lines"] == ["cd /tmp/snap && ../bin/deploy-app.sh stg"]
    assert len(DryRun(ACTIONS, [], "c").document(verbose=True)["actions"][0]["lines"]) == 3


def test_json_is_printed_parseable_masked_and_without_a_lone_surrogate(capsys, monkeypatch):
    monkeypatch.setenv("CIRCLECI_TOKEN", "SENTINEL-token-1234567890")
    monkeypatch.setenv("FOO_PASSWORD", "p\u00e4ssw\u00f6rd-geheim-123")  # escaped as \u00e4 it escaped the masker
    print_json({"branch": "evil\ud800\x1b[2J", "by": ["SENTINEL-token-1234567890", "p\u00e4ssw\u00f6rd-geheim-123"]})
    out = capsys.readouterr().out
    assert json.loads(out) == {"branch": "evil?\x1b[2J", "by": ["****", "****"]} and "\x1b" not in out


def test_json_sends_everything_else_to_stderr_and_needs_a_dry_run_on_the_apply_tasks(capsys):
    with for_a_person(True):
        print("for a person")
    print_json({"a": 1})
    captured = capsys.readouterr()
    assert captured.err == "for a person\n" and json.loads(captured.out) == {"a": 1}
    dry_run_only(True, True)
    dry_run_only(False, False)
    with pytest.raises(RunbookError, match="--json is for a dry run's findings") as raised:
        dry_run_only(True, False)
    assert raised.value.id == "flag-invalid"


def test_seconds_flags_show_as_numbers_in_help_and_reach_the_task_as_written():
    from invoke.parser import ParserContext

    from runbook.tasks import iam_tasks, release_tasks

    context = ParserContext(args=release_tasks.release.get_arguments())
    assert context.help_for("--poll-s")[0] == "-p INT, --poll-s=INT"
    assert context.help_for("--env")[0] == "-e STRING, --env=STRING"
    flag = next(a for a in iam_tasks.env_.get_arguments() if a.name == "lock_timeout_s")
    flag.value = "2.5"  # Invoke's own int() would end in a traceback; the task's seconds() names the bounds
    assert flag.value == "2.5"


def test_the_resume_command_keeps_the_flags_as_given():
    from runbook.tasks._common import given

    assert given(yes=True, take_over=False, lock_timeout_s="2.5", poll_s=None, pipeline_wait_s="1 0") == [
        "--yes", "--lock-timeout-s 2.5", "--pipeline-wait-s '1 0'"]
