"""Each look-up once per run: the git commands and the runbook's own AWS calls of `inv iam.env` and `inv release`,
counted with real parts (a git that notes its arguments, tests/aws_proxy.py in front of moto, the CircleCI
stand-in). The counts are exact, each explained where it is expected.

The runs are made once for the module (`counted`) and each test reads what they did: a clone with the backend,
then (not counted) a first `inv iam.env`; then, counted, a second `inv iam.env` (the record is current: it
plans, applies the empty plan and records again), then `inv release` (the account scope was never applied:
it is applied; the environment's record is current: skipped; the pipeline failed at the IAM gate: rerun).

Against the design before the snapshot (commit cd5c9b2), measured the same way:
    inv iam.env   git: 8 commands then, 7 now (the checkout is inspected once; the snapshot is an `ls-tree` and a
                  `cat-file` of the scope's blobs).
                  AWS: 8 calls then, 12 now: the record is read while examining (it decides what is needed and
                  whether a state has gone missing) and read back after it is written (act, then verify), and
                  the state's version is read after the apply and after the record (no other apply in between).
    inv release   git: 9 commands then, 10 now (an `ls-tree` and a `cat-file` per scope, its snapshot; one
                  `ls-tree` and two `rev-parse`s fewer; `status` once).
                  AWS: 11 calls then, 14 now: the pipeline's decision uses the records the run has already read
                  and written; the extra calls are the read-back and the state's version, twice.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.aws_proxy import AwsProxy
from tests.circleci_standin import CircleCIStandIn, job
from tests.conftest import FAKE_CREDENTIALS
from tests.project import Project, Result, base_config, git
from tests.runs import BUCKET, TABLE, assert_refused, make_backend

ACCOUNT_KEY, STG_KEY = "acme-api/iam/account.tfstate", "acme-api/iam/env/stg.tfstate"
ACCOUNT_RECORD, STG_RECORD = "/acme-api/iam/account", "/acme-api/iam/env/stg"

# What examining the backend asks (runbook.backend.look): the bucket, its three protections, the lock table.
BACKEND = Counter({("s3", f"HEAD /{BUCKET}"): 1, ("s3", f"GET /{BUCKET}?versioning"): 1,
                   ("s3", f"GET /{BUCKET}?encryption"): 1, ("s3", f"GET /{BUCKET}?publicAccessBlock"): 1,
                   ("dynamodb", f"DescribeTable {TABLE}"): 1})
IAM_ENV_AWS = BACKEND + Counter({
    ("sts", "GetCallerIdentity"): 1,  # the caller identity; its frozen keys serve every later call and Terraform
    ("s3", f"GET /{BUCKET}/{STG_KEY}"): 1,  # the state's first KiB: it exists, and which Terraform wrote it
    ("ssm", f"GetParameter {STG_RECORD}"): 2,  # the record while examining, then read back after the write (verify)
    ("ssm", f"PutParameter {STG_RECORD}"): 1,  # the record, once the apply exited 0
    ("s3", f"HEAD /{BUCKET}/{STG_KEY}"): 2,  # the state's version after the apply and after the record (no apply
                                             # in between: the record is not late)
})
RELEASE_AWS = BACKEND + Counter({
    ("sts", "GetCallerIdentity"): 1,
    ("s3", f"GET /{BUCKET}/{ACCOUNT_KEY}"): 1, ("s3", f"GET /{BUCKET}/{STG_KEY}"): 1,  # both scopes' states, once
    ("ssm", f"GetParameter {ACCOUNT_RECORD}"): 2,  # while examining; read back after the write
    ("ssm", f"GetParameter {STG_RECORD}"): 1,  # while examining: current, so the scope is skipped
    ("ssm", f"PutParameter {ACCOUNT_RECORD}"): 1,  # the account scope, applied
    ("s3", f"HEAD /{BUCKET}/{ACCOUNT_KEY}"): 2,  # its state's version after the apply and after the record
})
# git: one `status` (branch, HEAD, changes), one `ls-tree` (the tree ids of every path the scopes read, and of
# the configuration), one `config` (the remotes), one `fetch` and one `rev-parse` (the team's branch), and one
# `ls-tree` and one `cat-file` per scope applied or planned (its snapshot: the blobs of its paths).
IAM_ENV_GIT = Counter({"status": 1, "ls-tree": 2, "config": 1, "fetch": 1, "rev-parse": 1, "cat-file": 1})
RELEASE_GIT = IAM_ENV_GIT + Counter({"ls-tree": 1, "cat-file": 1,  # the account scope's snapshot too
                                     "show": 1})  # the commit's time, to find the pipeline of this commit


def noting_git(tmp_path: Path, env: dict, log: Path) -> dict:
    """*env* with a `git` first on PATH that notes each command line (folder, tab, arguments) in *log*."""
    folder = tmp_path / "git-shim"
    folder.mkdir(exist_ok=True)
    shim = folder / "git"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\t%s\\n" "$PWD" "$*" >> "$GIT_NOTES"\nexec "{shutil.which("git")}" "$@"\n')
    shim.chmod(0o755)
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}", "GIT_NOTES": str(log)}


def subcommands(log: Path) -> Counter:
    """git's subcommand of each noted line (its first word that is neither an option nor the value of `-c`)."""
    lines = log.read_text().splitlines() if log.exists() else []
    found = Counter()
    for line in lines:
        words = line.split("\t", 1)[1].split(" ")
        found[next(w for i, w in enumerate(words) if not w.startswith("-") and (i == 0 or words[i - 1] != "-c"))] += 1
    return found


@dataclass
class Counted:
    """What one counted run did: its result, the runbook's AWS calls, git's command lines, CircleCI's requests."""

    result: Result
    aws: Counter
    git_log: Path
    ci: list

    @property
    def git(self) -> Counter:
        return subcommands(self.git_log)


@pytest.fixture(scope="module")
def counted(moto_endpoint, venv_bin, tmp_path_factory) -> dict[str, Counted]:
    """`inv iam.env` then `inv release`, counted, in one clone (see the module docstring).

    Module-scoped, so it builds the environment that the function-scoped ``aws_env`` fixture of conftest.py
    gives (fake credentials, no AWS_*/TF_* of the caller, the pinned tools first on PATH, a cache of its own)."""
    tmp = tmp_path_factory.mktemp("lookups")
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_")) and k not in (
        "CHECKPOINT_DISABLE", "DEPLOY_MODE", "DEPLOY_SCOPE", "TERRAFORM_BIN")}
    env.update(FAKE_CREDENTIALS, PATH=os.pathsep.join([str(venv_bin), os.environ.get("PATH", os.defpath)]),
               TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1", XDG_CACHE_HOME=str(tmp / "xdg-cache"))
    done = {}
    with AwsProxy(moto_endpoint) as proxy, CircleCIStandIn() as ci:
        ci.finish_on_poll = True  # the rerun the release starts ends at the watcher's first poll
        project = Project.create(tmp, {**env, **ci.env()}, base_config(proxy.url))
        ci.add_pipeline("gh/acme/acme-api", "staging", git(project.path, "rev-parse", "HEAD"), workflows=[
            ("build-test-deploy", "failed", [job("test"), job("iam-gate-stg", "failed", requires=["test"]),
                                             job("deploy-stg", "blocked", requires=["iam-gate-stg"])])])
        make_backend(moto_endpoint)
        first = project.inv("iam.env", "--name", "stg")
        assert first.code == 0, first.all
        for name, args in (("iam.env", ("iam.env", "--name", "stg")),
                           ("release", ("release", "--env", "stg", "--yes", "--poll-s", "2"))):
            proxy.reset()
            ci.requests.clear()
            log = tmp / f"git-{name}.log"
            result = project.inv(*args, env=noting_git(tmp, project.env, log))
            assert result.code == 0, result.all
            done[name] = Counted(result, proxy.by("boto3"), log, list(ci.requests))
    return done


def test_iam_env_asks_aws_each_question_once(counted):
    assert counted["iam.env"].aws == IAM_ENV_AWS, counted["iam.env"].result.all


def test_iam_env_runs_each_git_command_once(counted):
    run = counted["iam.env"]
    assert run.git == IAM_ENV_GIT, run.git_log.read_text()


def test_release_asks_aws_each_question_once(counted):
    run = counted["release"]
    assert run.aws == RELEASE_AWS, run.result.all


def test_release_runs_each_git_command_once_and_asks_circleci_what_it_needs(counted):
    run = counted["release"]
    assert run.git == RELEASE_GIT, run.git_log.read_text()
    calls = Counter((r.method, r.path.split("/api/v2/", 1)[1].split("/", 1)[0]) for r in run.ci
                    if r.path.startswith("/api/v2/"))
    assert calls[("GET", "project")] == 2, run.ci  # the token check before any change, then this commit's pipeline
    assert calls[("GET", "pipeline")] == 1, run.ci  # that pipeline's workflows
    assert sum(1 for r in run.ci if r.method == "POST") == 1, run.ci  # one rerun from failed
    assert "rerunning from failed" in run.result.out


def test_a_failed_preflight_exits_at_once_while_aws_does_not_answer(tmp_path, aws_env):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        project = Project.create(tmp_path, aws_env, base_config(f"http://127.0.0.1:{listener.getsockname()[1]}"),
                                 branch="main")
        started = time.monotonic()
        result = project.inv("iam.env", "--name", "stg", timeout=60)
        took = time.monotonic() - started
    assert_refused(result, "ERROR [wrong-branch]", "'staging'", "git checkout staging")
    assert took < 15, f"waited {took:.0f} s for a look-up nobody needs any more"

