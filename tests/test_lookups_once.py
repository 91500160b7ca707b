"""Each look-up once per run: git commands and AWS calls of `inv iam.env` and `inv release`, counted with
real parts (a git that notes its arguments, a counting proxy in front of moto, the CircleCI stand-in)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.aws_counter import AwsCounter
from tests.circleci_standin import CircleCIStandIn, job
from tests.project import Project, base_config, git

pytestmark = pytest.mark.terraform


@pytest.fixture
def counter(moto_reset):
    with AwsCounter(moto_reset) as proxy:
        yield proxy


def noting_git(tmp_path: Path, env: dict) -> tuple[dict, Path]:
    """An environment whose `git` notes each command line (folder, tab, arguments) in a log, then runs git."""
    folder = tmp_path / "git-shim"
    folder.mkdir()
    log = tmp_path / "git.log"
    shim = folder / "git"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\t%s\\n" "$PWD" "$*" >> "{log}"\nexec "{shutil.which("git")}" "$@"\n')
    shim.chmod(0o755)
    return {**env, "PATH": f"{folder}:{env['PATH']}"}, log


def git_commands(log: Path) -> Counter:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split("\t", 1)[1].split(" ")[0] for line in lines)


def repeated(calls: Counter) -> dict:
    return {key: n for key, n in calls.items() if n > 1}


def test_iam_env_looks_everything_up_once(tmp_path, aws_env, counter):
    project = Project.create(tmp_path, aws_env, base_config(counter.url))
    first = project.inv("iam.env", "--name", "stg")  # first deploy: creates the backend
    assert first.code == 0, first.all
    counter.reset()
    env, log = noting_git(tmp_path, aws_env)
    result = project.inv("iam.env", "--name", "stg", env=env)
    assert result.code == 0, result.all
    runbook_calls = counter.by("boto3")
    assert runbook_calls[("sts", "GetCallerIdentity")] == 1, runbook_calls
    assert runbook_calls[("ssm", "PutParameter /acme-api/iam/env/stg")] == 1, runbook_calls
    assert not repeated(runbook_calls), runbook_calls
    commands = git_commands(log)
    assert commands["fetch"] == 1, log.read_text()
    assert commands["status"] == 1, log.read_text()
    lines = Counter(log.read_text().splitlines())
    assert not repeated(lines), log.read_text()


def test_release_looks_everything_up_once(tmp_path, aws_env, counter):
    with CircleCIStandIn() as ci:
        ci.auto_advance = True  # the rerun the release starts runs to its end while it watches
        project = Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(counter.url))
        head = git(project.path, "rev-parse", "HEAD")
        ci.add_pipeline("gh/acme/acme-api", "staging", head, workflows=[("build-test-deploy", "failed", [
            job("test"), job("iam-gate-stg", "failed", requires=["test"]),
            job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
        first = project.inv("iam.env", "--name", "stg")  # the backend exists before the release
        assert first.code == 0, first.all
        counter.reset()
        env, log = noting_git(tmp_path, project.env)
        result = project.inv("release", "--env", "stg", "--yes", "--poll-s", "0.1", env=env)
        assert result.code == 0, result.all
        runbook_calls = counter.by("boto3")
        assert runbook_calls[("sts", "GetCallerIdentity")] == 1, (runbook_calls, result.all)
        assert not repeated(runbook_calls), (runbook_calls, result.all)
        commands = git_commands(log)
        assert commands["fetch"] == 1, log.read_text()
        assert commands["status"] == 1, log.read_text()
        assert not repeated(Counter(log.read_text().splitlines())), log.read_text()
        assert ci.count("POST") == 1  # one rerun from failed
        pipelines = [r for r in ci.requests if r.method == "GET" and r.path.endswith("/pipeline")]
        assert len(pipelines) <= 2, pipelines  # the token check, then the pipeline of this commit


def test_a_failed_preflight_exits_at_once_while_aws_does_not_answer(tmp_path, aws_env):
    import socket
    import time

    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        project = Project.create(tmp_path, aws_env, base_config(f"http://127.0.0.1:{listener.getsockname()[1]}"),
                                 branch="main")
        started = time.monotonic()
        result = project.inv("iam.env", "--name", "stg", timeout=60)
        took = time.monotonic() - started
    assert result.code != 0 and "Traceback" not in result.all
    assert "deployed from 'staging'" in result.err
    assert took < 15, f"waited {took:.0f} s for a look-up nobody needs any more"
