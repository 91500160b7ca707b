"""``inv release``: the whole runbook for one environment, running only what is needed: the CircleCI token is
proved, the IAM steps this commit needs are applied (:func:`runbook.iam.run`), then the one rerun decision
(:func:`runbook.pipeline.decide_rerun`) on the records the run read or wrote says what the pipeline needs."""

from __future__ import annotations

from dataclasses import replace

import tenacity

from runbook import console, git, iam, pipeline, records
from runbook.config import Config, Environment
from runbook.errors import RunbookError
from runbook.facts import Facts, Options
from runbook.scopes import for_environment


def release(config: Config, environment: Environment, opts: Options, *, poll_s: float, pipeline_wait_s: float,
            command: str, checkout: git.Checkout | None = None) -> iam.DryRun | None:
    """Apply what this commit's IAM needs for *environment*, then get its pipeline through.

    Args:
        poll_s: seconds between polls while watching the workflow.
        pipeline_wait_s: seconds to wait for the pipeline of this commit to appear (a merge starts it within
            seconds; this covers a slow webhook).
        command: the command line that resumes the release.
        checkout: the checkout as the task layer inspected it (default: inspected here).

    Returns the :class:`runbook.iam.DryRun` of a dry run, else None. Raises RunbookError for any finding or failure
    (exit 5 when the watched workflow waits at an approval job).
    """
    client = None if opts.dry_run else pipeline.client_for(config)  # a dry run calls no CircleCI: no token needed
    urls: list[str] = []

    def prove_token(facts: Facts) -> None:
        # One real call proves the token, the host and the project slug before anything changes.
        next(iter(client.pipelines(branch=environment.branch, max_pages=1)), None)
        console.say(f"  {'circleci:':<11}token from {client.token_source} accepted by {client.host} for "
                    f"{config.circleci.project_slug}")

    done = iam.run(config, environment, for_environment(config, environment), replace(opts, only_needed=True),
                   command=command, before_aws=prove_token, checkout=checkout,
                   then="Then the pipeline of this commit (looked up at run time): a succeeded one needs nothing, a "
                        "running one is watched, one that failed at the IAM gate or the deploy is rerun from failed.")
    if isinstance(done, iam.DryRun):
        return done
    try:
        _pipeline(client, config, environment, done, poll_s, pipeline_wait_s, urls)
    finally:
        console.say()
        console.heading("Summary")
        done.summary()
        for url in urls:
            console.say(f"  {url}")
    console.ok(f"Release of {environment.name} complete.")


def _find(client, config: Config, environment: Environment, head: str, wait_s: float) -> pipeline.Target:
    """The workflow of this commit's pipeline, waiting up to *wait_s* seconds for CircleCI to start it."""
    waiting = tenacity.Retrying(  # only NoPipelineYet is worth waiting out; other errors stop at once
        retry=tenacity.retry_if_exception_type(pipeline.NoPipelineYet), wait=tenacity.wait_fixed(10),
        stop=tenacity.stop_before_delay(wait_s), reraise=True,
        before_sleep=lambda _: console.say(f"  no pipeline for {head[:12]} yet; looking again in 10 s"))
    try:
        return waiting(pipeline.find_workflow, client, config, environment, head, head_time=git.commit_time(head))
    except pipeline.NoPipelineYet as exc:
        raise RunbookError(f"{exc.what} (waited {wait_s:.0f} s)", id="no-pipeline",
                           fix="check in the CircleCI app that the push of this commit started a pipeline "
                               "(project settings, webhooks); once it has, resume") from exc


def _pipeline(client, config: Config, environment: Environment, done: iam.Run, poll_s: float, wait_s: float,
              urls: list[str]) -> None:
    """Examine the pipeline of this commit afresh (after the IAM steps), decide (the one rerun decision), act."""
    console.heading("CircleCI: the pipeline of this commit")
    target = _find(client, config, environment, done.facts.checkout.head, wait_s)
    urls.append(target.url)
    statuses = [records.compare(s, done.facts.trees, done.records.get(s.name, done.facts.records.get(s.name)))
                for s in done.facts.scopes]
    decision = pipeline.decide_rerun(target.workflow, client.jobs(target.workflow.id), iam=statuses,
                                     environment=environment, url=target.url)
    number, watch_id = target.workflow.pipeline_number, target.workflow.id
    if decision.action == pipeline.NOTHING:
        console.ok(f"pipeline #{number}: {decision.why}")
        return
    if decision.action == pipeline.REFUSE:
        raise decision.error
    if decision.rerun:
        watch_id = client.rerun(target.workflow, from_failed=True, known=target.known)
        urls.append(client.web_url(number, watch_id))
        console.ok(f"pipeline #{number} {decision.why}: rerunning from failed now that the IAM is applied: {urls[-1]}")
    else:
        console.ok(f"pipeline #{number} is {target.workflow.status}: the IAM gate opens by itself once the records "
                   "match; nothing to rerun")
    console.heading("CircleCI: watch the workflow to the end")
    result = pipeline.watch(client, watch_id, poll_s=poll_s)
    pipeline.check_watch(result, environment, urls[-1])
    console.ok(f"succeeded after {result.seconds:.0f} s of watching")
