"""``inv release``: the whole runbook for one environment, in one command."""

from __future__ import annotations

from runbook.tasks._common import dry_run_only, for_a_person, given, print_json, seconds, target, task, user_errors
from runbook.tasks.iam_tasks import COMMON_HELP, TAKE_OVER_HELP


@task(help={
    "env": "environment to release, e.g. stg (default: the one whose branch is checked out)",
    "dry_run": "show every step and why; change nothing (calls neither AWS nor Terraform nor CircleCI)",
    "yes": "answer the confirmation (protected environment, or anything destroyed) with yes",
    "poll_s": "SECONDS (at least 2; decimals too) between polls while watching the workflow (default 10)",
    "pipeline_wait_s": "SECONDS (decimals too) to wait for the pipeline of this commit to appear (default 120)",
    "take_over": TAKE_OVER_HELP,
    "verbose": COMMON_HELP["verbose"],
    "json": COMMON_HELP["json"],
})
@user_errors
def release(c, env=None, dry_run=False, yes=False, poll_s=None, pipeline_wait_s=None, take_over=False,
            verbose=False, json=False):
    """Apply the IAM steps that this commit needs, then get its pipeline through (rerun, watch)."""
    from runbook import pipeline
    from runbook import release as releasing
    from runbook.facts import Options

    dry_run_only(json, dry_run)
    poll = seconds(poll_s, "--poll-s", pipeline.WATCH_POLL_S, minimum=pipeline.MIN_POLL_S)
    wait = seconds(pipeline_wait_s, "--pipeline-wait-s", 120)
    cfg, here, environment = target(env)
    with for_a_person(json):
        dry = releasing.release(cfg, environment, Options(dry_run=dry_run, assume_yes=yes, take_over=take_over,
                                                          verbose=verbose),
                                poll_s=poll, pipeline_wait_s=wait, checkout=here,
                                command=" ".join([f"inv release --env {environment.name}", *given(
                                    yes=yes, take_over=take_over, poll_s=poll_s, pipeline_wait_s=pipeline_wait_s)]))
    if dry is not None:
        if json:
            print_json(dry.document(verbose))
        dry.check()
