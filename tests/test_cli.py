"""The command line as a user meets it: help for every task, the error id and its section, the pipeline's deploy
job, and a status that can read no record at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Program

from runbook.tasks import namespace
from tests.project import base_config, git

TASKS = sorted(namespace().task_names)


@pytest.mark.parametrize("task", TASKS)
def test_help_after_the_task_name_shows_its_help_and_runs_nothing(task, capsys):
    Program(namespace=namespace(), binary="inv[oke]").run(["inv", task, "--help"], exit=False)
    out = capsys.readouterr()
    assert f"inv[oke] [--core-opts] {task} [--options]" in out.out
    assert "ERROR" not in out.out + out.err


def test_a_user_sees_the_id_and_its_section_with_the_exit_code(project):
    result = project.inv("iam.env", "--name", "stag", "--dry-run")
    assert result.code == 1, result.all
    assert "ERROR [unknown-environment]: There is no environment 'stag'. Did you mean 'stg'?" in result.err
    assert result.err.rstrip().endswith("See TROUBLESHOOTING.md#unknown-environment")
    assert "Traceback" not in result.all


@pytest.mark.parametrize("task", ["ci.gate", "ci.deploy"])
def test_a_missing_env_is_named_with_an_example(project, task):
    result = project.inv(task)
    assert result.code == 1 and "Traceback" not in result.all
    assert "--env is required. Fix: add it, for example --env stg" in result.err


def test_the_deploy_job_runs_the_configured_command_or_says_none_is(project, tmp_path):
    missing = project.inv("ci.deploy", "--env", "stg")
    assert missing.code == 1 and "No deploy_command is configured for environment stg" in missing.all
    assert "environments.stg.deploy_command" in missing.all
    config = base_config(None)
    marker = tmp_path / "deployed"
    config["environments"]["stg"]["deploy_command"] = f"touch {marker}"
    project.commit_config(config)
    assert project.inv("ci.deploy", "--env", "stg").code == 0 and marker.exists()
    config["environments"]["stg"]["deploy_command"] = "exit 7"
    project.commit_config(config)
    failed = project.inv("ci.deploy", "--env", "stg")
    assert failed.code == 7 and "The deploy command of stg exited 7" in failed.all


def test_a_status_that_can_read_no_record_is_a_failure_not_a_state(project):
    env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = project.inv("iam.status", "--check", env=env)
    assert result.code == 1, result.all
    assert "unknown: No AWS credentials" in result.out and "ERROR [record-unreadable]" in result.err


@pytest.mark.parametrize("closed", [1, 2])
def test_a_stream_closed_before_the_run_is_no_defect(project, closed):
    """``inv ... 2>&-``: Python starts with sys.stderr None; the dry run still prints its JSON (exit 4: a feature
    branch is the wrong branch), and with stdout closed it still ends with its own exit code, not a defect (70)."""
    git(project.path, "checkout", "-q", "-b", "feature/x")
    args = ["iam.env", "--name", "stg", "--dry-run", *(["--json"] if closed == 2 else [])]
    done = subprocess.run([str(Path(sys.executable).parent / "inv"), *args], cwd=project.path, env=project.env,
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.close(closed))
    assert done.returncode == 4, done.stdout + done.stderr
    if closed == 2:
        assert json.loads(done.stdout)["findings"][0]["id"] == "wrong-branch"
