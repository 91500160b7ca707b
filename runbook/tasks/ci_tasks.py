"""``inv ci.*``: the pipeline side of the runbook (gate and deploy jobs)."""

from __future__ import annotations

import shlex
import subprocess

from invoke import task

from runbook import config as configuration
from runbook import console
from runbook.errors import RunbookError
from runbook.tasks._common import user_errors


@task(help={
    "env": "environment being deployed, e.g. stg",
    "timeout_s": "give up after this many seconds (default 1800)",
    "poll_s": "seconds between polls of the applied records (default 15)",
    "settle_s": "seconds to wait for IAM propagation once everything matches (default 10)",
})
@user_errors
def gate(c, env, timeout_s=1800.0, poll_s=15.0, settle_s=None):
    """Pipeline job: wait until the IAM for this commit is applied (account and environment)."""
    from runbook import gate as iam_gate

    cfg = configuration.load()
    environment = cfg.environment(env)
    iam_gate.wait(
        cfg, environment, timeout_s=float(timeout_s), poll_s=float(poll_s),
        settle_s=iam_gate.DEFAULT_SETTLE_S if settle_s is None else float(settle_s),
    )


@task(help={"env": "environment being deployed, e.g. stg"})
@user_errors
def deploy(c, env):
    """Pipeline job: run the environment's deploy_command from the configuration."""
    cfg = configuration.load()
    environment = cfg.environment(env)
    if not environment.deploy_command:
        raise RunbookError(
            f"No deploy_command is configured for environment {env}; nothing was deployed",
            where=f"{cfg.path}, field environments.{env}.deploy_command",
            fix=f"add deploy_command (the command that deploys {env}, e.g. `npx serverless deploy --stage {env}`)",
        )
    console.heading(f"Deploying {env}: {environment.deploy_command}")
    code = subprocess.call(shlex.split(environment.deploy_command))
    if code != 0:
        raise RunbookError(f"The deploy command of {env} exited {code}", fix="read its output above", code=code)
