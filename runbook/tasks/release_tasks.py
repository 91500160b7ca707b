"""``inv release``: the whole runbook for one environment, in one command."""

from __future__ import annotations

from invoke import task

from runbook.tasks._common import seconds, user_errors
from runbook.tasks.iam_tasks import TAKE_OVER_HELP


@task(help={
    "env": "environment to release, e.g. stg (default: the one whose branch is checked out)",
    "dry_run": "show every step and why; change nothing (reads the records and the pipeline)",
    "yes": "answer the confirmation (protected environment, or anything destroyed) with yes",
    "poll_s": "SECONDS between polls while watching the workflow (default 10)",
    "pipeline_wait_s": "SECONDS to wait for the pipeline of this commit to appear (default 120)",
    "take_over": TAKE_OVER_HELP,
})
@user_errors
def release(c, env=None, dry_run=False, yes=False, poll_s=None, pipeline_wait_s=None, take_over=False):
    """Apply the IAM steps that this commit needs, then get its pipeline through (rerun, watch)."""
    from runbook import config as configuration
    from runbook import console, iam, pipeline
    from runbook import release as releasing
    from runbook.errors import RunbookError
    from runbook.scopes import Scope

    poll = seconds(poll_s, "--poll-s", pipeline.WATCH_POLL_S, minimum=pipeline.MIN_POLL_S)
    wait = seconds(pipeline_wait_s, "--pipeline-wait-s", 120)
    cfg = configuration.load()
    environment = iam.environment_for(cfg, env)
    ctx = releasing.ReleaseRun(
        cfg, Scope.of_environment(cfg, environment), environment, dry_run=dry_run, assume_yes=yes,
        poll_s=poll, pipeline_wait_s=wait, take_over=take_over,
    )
    plan = releasing.build(ctx)
    if dry_run:
        plan.dry_run(ctx)
        return
    ctx.prefetch()
    try:
        plan.run(ctx)
    except RunbookError:
        _summary(plan, ctx)
        raise
    _summary(plan, ctx)
    console.ok(f"Release of {environment.name} complete.")


def _summary(plan, ctx) -> None:
    from runbook import console

    console.say()
    console.heading("Summary")
    plan.summary()
    for url in ctx.urls:
        console.say(f"  {url}")
