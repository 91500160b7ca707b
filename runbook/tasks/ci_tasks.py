"""``inv ci.*``: CircleCI from the terminal (status, rerun, approve, diagnose) and the pipeline's own jobs (gate,
deploy)."""

from __future__ import annotations

import subprocess

from runbook.tasks._common import print_json, required, seconds, target, task, user_errors

ENV_HELP = "environment (default: the one whose branch is checked out)"
LATEST_HELP = "use the branch's newest pipeline when none is for your HEAD"


def _target(env, latest):
    from runbook import console, git, pipeline

    cfg, here, environment = target(env)
    client = pipeline.client_for(cfg)
    found = pipeline.find_workflow(client, cfg, environment, here.head, latest=latest,
                                   head_time=git.commit_time(here.head))
    if not found.matches_head:
        console.warn(f"--latest: pipeline #{found.pipeline.number} is for {found.pipeline.revision[:12]}, "
                     "not your HEAD")
    return cfg, environment, client, found


@task(help={"env": ENV_HELP, "latest": LATEST_HELP,
            "json": "print the pipeline as one JSON document (format 1, README 'JSON output') instead of the lines"})
@user_errors
def status(c, env=None, latest=False, json=False):
    """Show the pipeline of your commit: workflow status, each job with status and duration, URL."""
    from runbook import console, pipeline

    cfg, environment, client, target = _target(env, latest)
    jobs = client.jobs(target.workflow.id)
    if json:
        def when(moment):
            return moment.isoformat() if moment else None

        print_json({
            "format": 1, "environment": environment.name, "branch": environment.branch, "url": target.url,
            "pipeline": {"number": target.pipeline.number, "revision": target.pipeline.revision},
            "workflow": {"id": target.workflow.id, "name": target.workflow.name, "status": target.workflow.status},
            "jobs": [{"name": j.name, "status": j.status, "type": j.type, "started_at": when(j.started_at),
                      "stopped_at": when(j.stopped_at)} for j in jobs],
            "waiting_for_approval": pipeline.waiting_approvals(jobs)})
        return
    console.say(f"pipeline #{target.pipeline.number}  {environment.branch} @ {target.pipeline.revision[:12]}")
    console.say(f"workflow {target.workflow.name}: {target.workflow.status}")
    width = max((len(j.name) for j in jobs), default=4)
    for job in jobs:
        console.say(f"  {job.name:<{width}}  {job.status:<12} {job.duration:>7}{' (approval)' * job.approval}")
    waiting = pipeline.waiting_approvals(jobs)
    if waiting:
        console.say(f"waiting for approval: {', '.join(waiting)}: {pipeline.approve_command(environment, waiting)}")
    console.say(target.url)


@task(help={
    "env": ENV_HELP,
    "latest": LATEST_HELP,
    "wait": "wait for a running workflow to stop first; watch the new workflow to the end (exit 0 only if it "
            "succeeds; exit 5 when it stops at an approval)",
    "force": "rerun although a job other than the IAM gate or the deploy failed, or the applied records say an IAM "
             "step is pending (or cannot be read)",
    "poll_s": "with --wait: SECONDS between polls (default 10: at most 12 requests a minute; at least 2; decimals too)",
    "from_start": "rerun the whole workflow from the start (the only rerun for status error or canceled)",
})
@user_errors
def rerun(c, env=None, latest=False, wait=False, force=False, poll_s=None, from_start=False):
    """Rerun the workflow of your commit from failed, once the IAM steps are applied."""
    from dataclasses import replace

    from runbook import console, pipeline, records
    from runbook.scopes import for_environment

    poll = seconds(poll_s, "--poll-s", pipeline.WATCH_POLL_S, minimum=pipeline.MIN_POLL_S)
    cfg, environment, client, target = _target(env, latest)
    workflow, jobs = target.workflow, client.jobs(target.workflow.id)
    label = f"Workflow {workflow.name} of pipeline #{workflow.pipeline_number}"

    def decide(iam=None):
        return pipeline.decide_rerun(workflow, jobs, iam=iam, environment=environment, url=target.url, force=force,
                                     from_start=from_start)

    decision = decide()
    if decision.action == pipeline.WAIT and wait:
        console.say(f"{label} is {workflow.status}: waiting for it to stop (Ctrl-C stops waiting, not the workflow)")
        result = pipeline.watch(client, workflow.id, poll_s=poll)
        workflow, jobs = replace(workflow, status=result.status), result.jobs
        decision = decide()
    if decision.rerun and not force:  # only now are the records worth reading
        decision = decide(records.examine(for_environment(cfg, environment)))
    if decision.action == pipeline.NOTHING:
        console.ok(f"{label} {decision.why}. {target.url}")
        return
    if decision.error:
        raise decision.error
    if force:
        console.warn("--force: rerunning whatever the failed jobs and the applied records say")
    new_id = client.rerun(workflow, from_failed=decision.action == pipeline.RERUN_FROM_FAILED, known=target.known)
    url = client.web_url(workflow.pipeline_number, new_id)
    how = decision.action.removeprefix("rerun ")  # "from failed" or "from the start"
    console.ok(f"Rerunning {workflow.name} of pipeline #{workflow.pipeline_number} {how}: {url}")
    if wait:
        result = pipeline.watch(client, new_id, poll_s=poll)
        pipeline.check_watch(result, environment, url)
        console.ok(f"The rerun succeeded ({result.seconds:.0f} s).")


@task(help={
    "env": ENV_HELP,
    "job": "the approval job to approve (default: the one that waits, when exactly one does)",
    "yes": "answer the confirmation that a protected environment asks for",
})
@user_errors
def approve(c, env=None, job=None, yes=False):
    """Approve the approval job that the workflow of your commit waits at (on hold)."""
    from runbook import ci, console, pipeline
    from runbook.errors import RunbookError

    cfg, environment, client, target = _target(env, latest=False)
    workflow = target.workflow
    chosen = pipeline.approval_choice(workflow, client.jobs(workflow.id), environment, job, url=target.url)
    label = f"{chosen.name} of workflow {workflow.name} (pipeline #{workflow.pipeline_number})"
    if chosen.status == ci.SUCCESS:
        console.ok(f"{label} is already approved. {target.url}")
        return
    question = (f"Approve {chosen.name} of workflow {workflow.name} for {environment.name} (protected), pipeline "
                f"#{workflow.pipeline_number} at {target.pipeline.revision[:12]}?")
    if environment.protected and not console.confirm(question, assume_yes=yes):
        raise RunbookError(f"Not approved: {chosen.name} still waits; nothing was changed", id="not-confirmed",
                           fix=f"{pipeline.approve_command(environment, [chosen.name])} and answer y (or add --yes)")
    verb = "Approved" if client.approve(workflow.id, chosen) else "Already approved:"
    console.ok(f"{verb} {label}; `inv ci.status --env {environment.name}` follows it. {target.url}")


@task(help={"env": ENV_HELP, "latest": LATEST_HELP})
@user_errors
def diagnose(c, env=None, latest=False):
    """Say why the workflow of your commit failed: an IAM race, or something else, with the remedy."""
    from runbook import ci, console, pipeline, records
    from runbook.errors import TROUBLESHOOTING
    from runbook.scopes import for_environment

    cfg, environment, client, target = _target(env, latest)
    workflow = target.workflow
    if workflow.status in (ci.SUCCESS, ci.RUNNING, ci.NOT_RUN):
        console.say(f"Workflow {workflow.name} is {workflow.status}: nothing to diagnose. {target.url}")
        return
    jobs = client.jobs(workflow.id)
    failed = any(j.failed and not j.approval for j in jobs)
    iam = records.examine(for_environment(cfg, environment)) if failed else None
    findings = pipeline.diagnose(client, jobs, iam)
    for f in findings:
        console.say(f"{f.job}{f' step {f.step!r}' if f.step else ''}: {f.kind}")
        for text in filter(None, (f.line, f.note and f"({f.note})")):
            console.say(f"    {text}")
    race = any(f.kind.startswith("iam-race") for f in findings)
    if findings:
        console.say()
        console.warn("An IAM race: the deploy ran before the IAM for this commit was applied." if race else
                     f"Not an IAM race. See {TROUBLESHOOTING}#workflow-failed and the job output: {target.url}")
    decision = pipeline.decide_rerun(workflow, jobs, iam=iam, environment=environment, url=target.url)
    console.say(f"{workflow.name} {decision.why}")
    console.say(f"Remedy: {decision.fix}" + (f" (or all at once: inv release --env {environment.name})" if race
                                             else ""))


@task(help={"file": "the text to post, e.g. iam-preview/comment.md (the preview job writes it)"})
@user_errors
def comment(c, file=None):
    """Pipeline job: keep one comment on this build's pull request up to date with the IAM preview.

    Needs GITHUB_TOKEN (from the job's context) and CircleCI's CIRCLE_PULL_REQUEST; without them, or when GitHub
    fails, it says so and exits 0: a comment never fails the job."""
    import os
    from pathlib import Path

    from runbook import console, github

    required(file, "--file", "iam-preview/comment.md")
    pull = github.PullRequest.from_url(os.environ.get("CIRCLE_PULL_REQUEST", ""))
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    if not token or pull is None:
        console.say("Not commenting: " + ("no GITHUB_TOKEN in this job's context" if not token else
                                          "this build is for no pull request (CIRCLE_PULL_REQUEST is not set)")
                    + "; the preview is in the job's output and its artifact.")
        return
    try:
        text = Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        console.warn(f"Not commenting: {file} cannot be read ({exc.strerror}).")
        return
    done = github.keep_comment(pull, text, token)
    (console.warn if done.startswith("not") else console.ok)(f"Pull request #{pull.number}: {done}.")


@task(help={
    "env": "environment being deployed, e.g. stg",
    "timeout_s": "give up after this many SECONDS (default 1800; decimals too)",
    "poll_s": "SECONDS between polls of the applied records (default 15; decimals too)",
    "settle_s": "SECONDS to wait for IAM propagation once everything matches (default 10; decimals too)",
    "report_min": "MINUTES between 'still waiting' lines (default 5; decimals too)",
})
@user_errors
def gate(c, env=None, timeout_s=None, poll_s=None, settle_s=None, report_min=None):
    """Pipeline job: wait until the IAM for this commit is applied (account and environment).

    Says so every few minutes; with $RUNBOOK_GATE_WEBHOOK (a Slack-compatible incoming webhook) it posts when it
    starts waiting and when it opens or gives up."""
    from runbook import config as configuration
    from runbook import gate as iam_gate

    required(env, "--env", "stg")
    limits = dict(
        timeout_s=seconds(timeout_s, "--timeout-s", 1800, minimum=1),
        poll_s=seconds(poll_s, "--poll-s", 15, minimum=0.01),
        settle_s=seconds(settle_s, "--settle-s", iam_gate.DEFAULT_SETTLE_S),
        report_s=60 * seconds(report_min, "--report-min", iam_gate.DEFAULT_REPORT_S / 60, minimum=0.01, maximum=1440,
                              unit="minutes"),
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
    environment, where = cfg.environment(env), cfg.where("environments", env, "deploy_command")
    if not environment.deploy_command:
        raise RunbookError(
            f"No deploy_command is configured for environment {env}; nothing was deployed",
            id="deploy-command-missing",
            where=where,
            fix=f"add deploy_command (the command that deploys {env}, e.g. `npx serverless deploy --stage {env}`)",
        )
    console.heading(f"Deploying {env}: {environment.deploy_command}")
    # A shell line, like a `run` step of the pipeline: `cd app && npx serverless deploy` works.
    code = subprocess.call(["bash", "-eo", "pipefail", "-c", environment.deploy_command])
    if code != 0:
        raise RunbookError(
            f"The deploy command of {env} exited {code}" + (" (command not found)" if code == 127 else ""),
            id="deploy-command-failed",
            where=where,
            fix="read its output above; fix the command or what it deploys",
            code=code,
        )
