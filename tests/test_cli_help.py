"""Every task answers --help after its name with its help, never by running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runbook.tasks import namespace

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(namespace().task_names)


@pytest.mark.parametrize("task", TASKS)
def test_help_after_the_task_name_shows_its_help(task):
    done = subprocess.run([str(Path(sys.executable).parent / "inv"), task, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"inv[oke] [--core-opts] {task} [--options]" in done.stdout
    assert "ERROR" not in done.stdout + done.stderr


@pytest.mark.parametrize("task", ["ci.gate", "ci.deploy"])
def test_a_missing_env_is_named_with_an_example(task):
    done = subprocess.run([str(Path(sys.executable).parent / "inv"), task], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--env is required. Fix: add it, for example --env stg" in done.stderr
