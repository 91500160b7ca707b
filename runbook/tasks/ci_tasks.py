"""``inv ci.*``: CircleCI from the terminal (status, rerun, approve, diagnose) and the pipeline's own jobs (gate,
deploy)."""

from __future__ import annotations

import subprocess

from invoke import task

from runbook.tasks._common import required, seconds, user_errors

ENV_HELP = "environment (default: the one whose branch is checked out)"
LATEST_HELP = "use the branch's newest pipeline when none is for your HEAD"


def _target(env, latest):
    from runbook import config as configuration
    from runbook import console, git, pipeline
    from runbook.scopes import environment_for
    from runbook.tasks._common import checkout_branch

    cfg = configuration.load()
    environment = environment_for(cfg, env, checkout_branch())
    client = pipeline.client_for(cfg)
    target = pipeline.find_workflow(client, cfg, environment, git.head_commit(), latest=latest,
                                    head_time=git.commit_time())
    if not target.matches_head:
        console.warn(f"--latest: pipeline #{target.pipeline.get('number')} is for {target.commit[:12]}, "
                     "not your HEAD")
    return cfg, environment, client, target


@task(help={"env": ENV_HELP, "latest": LATEST_HELP})
@user_errors
def status(c, env=None, latest=False):
    """Show the pipeline of your commit: workflow status, each job with status and duration, URL."""
    from runbook import circleci, console, pipeline

    cfg, environment, client, target = _target(env, latest)
    jobs = client.jobs(target.workflow["id"])
    console.say(f"pipeline #{target.pipeline.get('number')}  {environment.branch} @ {target.commit[:12]}")
    console.say(f"workflow {target.workflow['name']}: {target.status}")
    width = max((len(j["name"]) for j in jobs), default=4)
    for job in jobs:
        kind = " (approval)" if job.get("type") == circleci.JOB_TYPE_APPROVAL else ""
        took = pipeline.duration(job)
        console.say(f"  {job['name']:<{width}}  {job['status']:<12} {took:>7}{kind}")
    waiting = pipeline.waiting_approvals(jobs)
    if waiting:
        console.say(f"waiting for approval: {', '.join(waiting)}: {pipeline.approve_command(environment, waiting)}")
    console.say(target.url)


def _on_hold(result, environment, url):
    from runbook import pipeline
    from runbook.errors import RunbookError

    waiting = ", ".join(result.waiting) or "an approval job"
    return RunbookError(
        f"Stopped watching: the workflow is on hold, waiting at approval job {waiting}; a person must approve it",
        id="on-hold",
        where=url,
        fix=f"{pipeline.approve_command(environment, result.waiting)} (or approve it in the CircleCI app)",
        code=pipeline.EXIT_ON_HOLD,
    )


@task(help={
    "env": ENV_HELP,
    "latest": LATEST_HELP,
    "wait": "wait for a running workflow to stop first; watch the new workflow to the end (exit 0 only if it "
            "succeeds; exit 5 when it stops at an approval)",
    "force": "rerun even though the applied records say an IAM step is pending (or cannot be read)",
    "poll_s": "with --wait: SECONDS between polls (default 10: at most 12 requests a minute; at least 2)",
    "from_start": "rerun the whole workflow from the start (the only rerun for status error or canceled)",
})
@user_errors
def rerun(c, env=None, latest=False, wait=False, force=False, poll_s=None, from_start=False):
    """Rerun the workflow of your commit from failed, once the IAM steps are applied."""
    from runbook import circleci, console, pipeline, status
    from runbook.errors import RunbookError
    from runbook.scopes import for_environment

    watch_poll_s = pipeline.poll_interval(seconds(poll_s, "--poll-s", pipeline.WATCH_POLL_S, minimum=0.01))
    cfg, environment, client, target = _target(env, latest)
    jobs = None
    if wait and target.status in circleci.MOVING_WORKFLOW_STATUSES:
        console.say(f"Workflow {target.workflow['name']} of pipeline #{target.pipeline.get('number')} is "
                    f"{target.status}: waiting for it to stop (Ctrl-C stops waiting, not the workflow)")
        result = pipeline.watch(client, target.workflow["id"], poll_s=watch_poll_s)
        if result.status == circleci.SUCCESS:
            console.ok(f"It succeeded ({result.seconds:.0f} s): nothing to rerun. {target.url}")
            return
        if result.status == circleci.ON_HOLD:
            raise _on_hold(result, environment, target.url)
        target = pipeline.Target(target.pipeline, {**target.workflow, "status": result.status}, target.url,
                                 target.matches_head, target.known)
        jobs = result.jobs
    elif target.status == circleci.ON_HOLD:
        jobs = client.jobs(target.workflow["id"])
    refusal = pipeline.rerun_refusal(target, environment, from_start=from_start, jobs=jobs)
    if refusal:
        raise refusal
    if force:
        console.warn("--force: not checking the applied records")
    else:
        statuses = status.examine(for_environment(cfg, environment))
        unknown = [st for st in statuses if st.state == status.UNKNOWN]
        if unknown:
            raise RunbookError(
                "Not rerunning: cannot tell whether the IAM for this commit is applied ("
                + "; ".join(f"{st.scope.label}: {st.reason}" for st in unknown) + "). Nothing was changed",
                id="iam-pending",
                fix="get read access to the records (aws sso login, AWS_PROFILE), or add --force if you are sure",
            )
        blocked = [st for st in statuses if st.needed]
        if blocked:
            lines = "; ".join(f"{st.scope.label}: {st.text}" for st in blocked)
            todo = status.commands(blocked, environment)
            raise RunbookError(
                f"Not rerunning: the IAM for this commit is not applied ({lines}); a rerun would fail the same "
                "way. Nothing was changed",
                id="iam-pending",
                fix=f"as an administrator on {environment.branch}: " + " && ".join(todo) + f", then "
                f"`inv ci.rerun --env {environment.name}`",
            )
    new_id = pipeline.rerun(client, target, from_start=from_start)
    url = client.web_url(cfg.circleci.project_slug, target.pipeline.get("number"), new_id)
    how = "from the start" if from_start else "from failed"
    console.ok(f"Rerunning {target.workflow['name']} of pipeline #{target.pipeline.get('number')} {how}: {url}")
    if wait:
        result = pipeline.watch(client, new_id, poll_s=watch_poll_s)
        if result.status == circleci.ON_HOLD:
            raise _on_hold(result, environment, url)
        if result.status != circleci.SUCCESS:
            raise RunbookError(f"The rerun ended {result.status}", id="workflow-failed", where=url,
                               fix=f"inv ci.diagnose --env {environment.name}")
        console.ok(f"The rerun succeeded ({result.seconds:.0f} s).")


@task(help={
    "env": ENV_HELP,
    "job": "the approval job to approve (default: the one that waits, when exactly one does)",
    "yes": "answer the confirmation that a protected environment asks for",
})
@user_errors
def approve(c, env=None, job=None, yes=False):
    """Approve the approval job that the workflow of your commit waits at (on hold)."""
    from runbook import circleci, console, pipeline
    from runbook.errors import RunbookError

    cfg, environment, client, target = _target(env, latest=False)
    jobs = client.jobs(target.workflow["id"])
    choice = pipeline.approval_choice(target, environment, jobs, job)
    if choice.status != circleci.ON_HOLD:
        console.ok(f"{choice.name} of workflow {target.workflow['name']} (pipeline #{target.pipeline.get('number')}) "
                   f"is already approved. {target.url}")
        return
    question = (f"Approve {choice.name} of workflow {target.workflow['name']} for {environment.name} "
                f"(protected), pipeline #{target.pipeline.get('number')} at {target.commit[:12]}?")
    if environment.protected and not console.confirm(question, assume_yes=yes):
        raise RunbookError(f"Not approved: {choice.name} still waits; nothing was changed", id="not-confirmed",
                           fix=f"{pipeline.approve_command(environment, [choice.name])} and answer y (or add --yes)")
    done = client.approve(target.workflow["id"], choice.job)
    verb = "Approved" if done else "Already approved:"
    console.ok(f"{verb} {choice.name} of workflow {target.workflow['name']} (pipeline "
               f"#{target.pipeline.get('number')}); `inv ci.status --env {environment.name}` follows it. {target.url}")


@task(help={"env": ENV_HELP, "latest": LATEST_HELP})
@user_errors
def diagnose(c, env=None, latest=False):
    """Say why the workflow of your commit failed: an IAM race, or something else, with the remedy."""
    from runbook import circleci, console, pipeline, status
    from runbook.errors import TROUBLESHOOTING, RunbookError
    from runbook.scopes import for_environment

    cfg, environment, client, target = _target(env, latest)
    name = target.workflow["name"]
    if target.status == circleci.UNAUTHORIZED:
        console.say(f"{name}: unauthorized (not IAM): the user who triggered it lacks access "
                    "to a restricted CircleCI context.")
        console.warn("Ask a CircleCI organisation admin to grant the context, then rerun it in the app: "
                     f"{target.url}")
        return
    if target.status == circleci.ON_HOLD:
        waiting = pipeline.waiting_approvals(client.jobs(target.workflow["id"]))
        console.say(f"{name}: on hold (not a failure): it waits at approval job {', '.join(waiting) or '?'} for a "
                    "person to approve it; the jobs after it start once it is approved.")
        console.warn(f"Approve it: {pipeline.approve_command(environment, waiting)} (or in the app: {target.url})")
        return
    if target.status not in (circleci.FAILED, circleci.ERROR, circleci.FAILING, circleci.CANCELED):
        console.say(f"Workflow {name} is {target.status}: nothing to diagnose. {target.url}")
        return
    findings = pipeline.diagnose(client, cfg, target, client.jobs(target.workflow["id"]))
    if not findings:
        console.say(f"Workflow is {target.status} but no job failed (canceled?). {target.url}")
        return
    for f in findings:
        step = f" step {f.step!r}" if f.step else ""
        console.say(f"{f.job}{step}: {f.kind}")
        if f.line:
            console.say(f"    {f.line}")
        if f.note:
            console.say(f"    ({f.note})")
    if any(f.kind.startswith("iam-race") for f in findings):
        try:
            pending = status.commands(status.examine(for_environment(cfg, environment)), environment)
        except RunbookError:
            pending = []
        commands = pending or [s.command(environment) for s in for_environment(cfg, environment)]
        console.say()
        console.warn("An IAM race: the deploy ran before the IAM for this commit was applied. Remedy:")
        for command in [*commands, f"inv ci.rerun --env {environment.name}"]:
            console.say(f"    {command}")
        console.say("  (or all at once: inv release --env " + environment.name + ")")
    else:
        console.say()
        console.warn(f"Not an IAM race. See {TROUBLESHOOTING}#workflow-failed and the job output: {target.url}")


@task(help={
    "env": "environment being deployed, e.g. stg",
    "timeout_s": "give up after this many SECONDS (default 1800)",
    "poll_s": "SECONDS between polls of the applied records (default 15)",
    "settle_s": "SECONDS to wait for IAM propagation once everything matches (default 10)",
})
@user_errors
def gate(c, env=None, timeout_s=None, poll_s=None, settle_s=None):
    """Pipeline job: wait until the IAM for this commit is applied (account and environment)."""
    from runbook import config as configuration
    from runbook import gate as iam_gate

    required(env, "--env", "stg")
    limits = dict(
        timeout_s=seconds(timeout_s, "--timeout-s", 1800),
        poll_s=seconds(poll_s, "--poll-s", 15, minimum=0.01),
        settle_s=seconds(settle_s, "--settle-s", iam_gate.DEFAULT_SETTLE_S),
    )
    cfg = configuration.load()
    iam_gate.wait(cfg, cfg.environment(env), **limits)


@task(help={"env": "environment being deployed, e.g. stg"})
@user_errors
def deploy(c, env=None):
    """Pipeline job: run the environment's deploy_command from the configuration."""
    from runbook import config as configuration
    from runbook import console
    from runbook.errors import RunbookError

    required(env, "--env", "stg")
    cfg = configuration.load()
    environment = cfg.environment(env)
    if not environment.deploy_command:
        raise RunbookError(
            f"No deploy_command is configured for environment {env}; nothing was deployed",
            id="deploy-command-missing",
            where=f"{cfg.path}, field environments.{env}.deploy_command",
            fix=f"add deploy_command (the command that deploys {env}, e.g. `npx serverless deploy --stage {env}`)",
        )
    console.heading(f"Deploying {env}: {environment.deploy_command}")
    # A shell line, like a `run` step of the pipeline: `cd app && npx serverless deploy` works.
    code = subprocess.call(["bash", "-eo", "pipefail", "-c", environment.deploy_command])
    if code != 0:
        raise RunbookError(
            f"The deploy command of {env} exited {code}" + (" (command not found)" if code == 127 else ""),
            id="deploy-command-failed",
            where=f"{cfg.path}, field environments.{env}.deploy_command",
            fix="read its output above; fix the command or what it deploys",
            code=code,
        )
