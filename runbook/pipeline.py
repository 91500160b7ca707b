"""The CircleCI side of the runbook: pick the workflow, decide about a rerun, watch, diagnose.

Built on :class:`runbook.circleci.CircleCIClient`; facts about the API (statuses,
rerun rules) follow CircleCI's API v2 reference (https://circleci.com/docs/api/v2/) and its
workflow docs (https://circleci.com/docs/workflows/). Status names come from
:mod:`runbook.circleci` only. What is printed goes through a ``say`` callback (default
:func:`runbook.console.say`) or :func:`watch`'s stream.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from runbook import circleci, console
from runbook.config import Config, Environment
from runbook.errors import Interrupted, RunbookError

WATCH_POLL_S = 10.0  # two requests per poll (workflow + jobs): 12 requests a minute at most
#: The shortest interval between polls of a workflow (seconds): CircleCI publishes no rate limit
#: and asks clients to avoid tight polling (https://circleci.com/docs/api-developers-guide/).
MIN_POLL_S = 2.0
#: How many pages of a branch's pipelines to read when looking for HEAD's pipeline (at most).
PIPELINE_PAGES = 10
#: A pipeline created this long before HEAD's commit time cannot be for HEAD (seconds; clock skew).
CLOCK_SKEW_S = 3600.0
#: Seconds to wait, one after the other, for the workflows of a just-created pipeline to be listed.
WORKFLOWS_WAIT_S = (1.0, 2.0, 4.0)
#: Exit code of a command that stopped because the workflow waits at an approval job.
EXIT_ON_HOLD = 5


@dataclass(frozen=True)
class Target:
    """The workflow a command acts on.

    Attributes:
        pipeline: the pipeline dict (``id``, ``number``, ``vcs.revision``...).
        workflow: the newest workflow of the configured name in that pipeline.
        url: its web app URL.
        matches_head: whether the pipeline's commit is the local HEAD.
    """

    pipeline: dict
    workflow: dict
    url: str
    matches_head: bool
    known: tuple[str, ...] = field(default=())  # ids of all the pipeline's workflows at look-up time

    @property
    def commit(self) -> str:
        return (self.pipeline.get("vcs") or {}).get("revision", "")

    @property
    def status(self) -> str:
        return self.workflow.get("status", "")


TIMEOUT_VAR = "RUNBOOK_HTTP_TIMEOUT_S"


def client_for(config: Config, **kwargs: Any) -> circleci.CircleCIClient:
    """A CircleCI client for the configured project.

    ``$RUNBOOK_HTTP_TIMEOUT_S`` (seconds) overrides the read timeout, for slow networks.
    Raises RunbookError without a token or a slug, or for a timeout that is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_VAR)
    if raw:
        try:
            value = float(raw)
            if not 0 < value < 3600:  # also refuses nan and inf
                raise ValueError
            kwargs.setdefault("read_timeout", value)
            kwargs.setdefault("connect_timeout", min(5.0, value))
        except ValueError:
            raise RunbookError(f"{TIMEOUT_VAR}={raw!r} is not a number of seconds between 0 and 3600",
                               id="circleci-setting-invalid",
                               fix=f"export {TIMEOUT_VAR}=30 (or unset it)") from None
    if config.circleci is None:
        raise RunbookError(
            "There is no circleci section in the configuration",
            id="config-invalid",
            where=f"{config.path}",
            fix="add circleci.project_slug (e.g. gh/org/repo) and circleci.workflow",
        )
    kwargs.setdefault("notify", console.warn)
    return circleci.CircleCIClient(config.circleci.host, **kwargs)


class NoPipelineYet(RunbookError):
    """CircleCI has no pipeline (of the branch, or for HEAD) yet: the one failure worth waiting out."""

    default_id = "no-pipeline"


def _when(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _stamp(moment: float | datetime | None) -> str:
    if moment is None:
        return "?"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def find_workflow(
    client: circleci.CircleCIClient,
    config: Config,
    environment: Environment,
    head: str,
    *,
    latest: bool = False,
    head_time: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = console.say,
) -> Target:
    """The workflow named ``circleci.workflow`` in the newest pipeline of the branch whose commit is *head*.

    Args:
        head: the local HEAD commit (40 hex).
        latest: when no pipeline matches *head*, take the branch's newest pipeline instead of failing.
        head_time: HEAD's commit time (seconds since the epoch), or None. A commit is pushed after
            it is made, so pipelines created more than :data:`CLOCK_SKEW_S` before it cannot be for
            it: paging stops there.
        sleep, say: how to wait and what to print while the workflows of a new pipeline are not
            listed yet.

    Requests: pages of pipelines until HEAD's is found, the pipelines are older than HEAD's commit,
    or :data:`PIPELINE_PAGES` pages were read (one page when HEAD's pipeline is the newest); then
    one list of workflows, repeated after :data:`WORKFLOWS_WAIT_S` while the pipeline lists none.

    Raises NoPipelineYet when the branch has no pipeline or none is for *head* (naming both
    commits and how far it looked), NoWorkflowsYet when the pipeline still lists no workflow
    after the waits, RunbookError when it has none of the configured name (naming those it has).
    """
    slug = config.circleci.project_slug
    newest = chosen = oldest = None
    seen = 0
    pages = circleci.PageCount()
    horizon = None if head_time is None else head_time - CLOCK_SKEW_S
    for pipeline in client.pipelines(slug, branch=environment.branch, max_pages=PIPELINE_PAGES, pages=pages):
        newest = newest or pipeline
        seen += 1
        if (pipeline.get("vcs") or {}).get("revision") == head:
            chosen = pipeline
            break
        oldest = pipeline
        created = _when(pipeline.get("created_at"))
        if horizon is not None and created is not None and created.timestamp() < horizon:
            break  # older than HEAD's commit: no pipeline further back can be for it
    if newest is None:
        raise NoPipelineYet(
            f"CircleCI has no pipeline for branch {environment.branch} of {slug}",
            where=f"{config.path}, fields circleci.project_slug and environments.{environment.name}.branch",
            fix=f"push the branch (git push origin {shlex.quote(environment.branch)}) and wait for the pipeline "
            "to start",
        )
    if chosen is None:
        if not latest:
            raise _no_pipeline_for_head(environment, head, head_time, newest, oldest, seen, pages)
        chosen = newest
    target = _named_workflow(client, config, chosen, sleep, say)
    return replace(target, matches_head=(chosen.get("vcs") or {}).get("revision") == head)


def _no_pipeline_for_head(environment, head, head_time, newest, oldest, seen, pages) -> NoPipelineYet:
    theirs = (newest.get("vcs") or {}).get("revision", "?")
    back = _stamp(_when(oldest.get("created_at")))
    looked = f"looked at {seen} pipeline(s), back to #{oldest.get('number')} of {back}"
    if pages.more:
        looked += f"; stopped after {pages.read} page(s), the limit, with older pipelines unread"
    env = shlex.quote(environment.name)
    created = _when(newest.get("created_at"))
    older = head_time is not None and created is not None and head_time < created.timestamp()
    if older:
        return NoPipelineYet(
            f"No pipeline of branch {environment.branch} is for your HEAD {head[:12]} (committed "
            f"{_stamp(head_time)}), which is older than the newest pipeline #{newest.get('number')} (for "
            f"{theirs[:12]}, created {_stamp(created)}); {looked}. CircleCI runs a pipeline for the tip of each "
            "push, so a commit pushed together with later ones has none of its own",
            fix=f"add --latest to act on pipeline #{newest.get('number')} (`inv ci.status --env {env} --latest`), "
            f"or check out its commit {theirs[:12]}; if you pushed {head[:12]} just now, wait for its pipeline",
        )
    return NoPipelineYet(
        f"No pipeline of branch {environment.branch} is for your HEAD {head[:12]} yet; the newest "
        f"(#{newest.get('number')}) is for {theirs[:12]}; {looked}",
        fix=f"push your commit (git push origin {shlex.quote(environment.branch)}) and wait for its pipeline to "
        f"start, or add --latest to act on the newest pipeline anyway",
    )


class NoWorkflowsYet(RunbookError):
    """The pipeline lists no workflow at all, even after waiting: it is still being set up (or its config failed)."""

    default_id = "workflow-not-found"


def _named_workflow(client, config, pipeline, sleep, say) -> Target:
    name = config.circleci.workflow
    number = pipeline.get("number")
    waits = list(WORKFLOWS_WAIT_S)
    workflows = client.workflows(pipeline["id"])
    while not workflows and waits:
        wait = waits.pop(0)
        say(f"  pipeline #{number} lists no workflows yet (just created?); looking again in {wait:g} s")
        sleep(wait)
        workflows = client.workflows(pipeline["id"])
    if not workflows:
        waited = sum(WORKFLOWS_WAIT_S)
        errored = pipeline.get("state") == "errored"
        raise NoWorkflowsYet(
            f"Pipeline #{number} has no workflows yet (waited {waited:g} s)"
            + (": its state is errored, so its configuration could not be compiled" if errored else ""),
            where=client.web_url(config.circleci.project_slug, number, "").rsplit("/workflows/", 1)[0],
            fix="open the pipeline in the CircleCI app: fix .circleci/config.yml if it shows an error"
            if errored else "wait a minute and run the command again; if it stays empty, open the pipeline in the "
            "CircleCI app (a configuration error shows there)",
        )
    named = [w for w in workflows if w["name"] == name]
    if not named:
        names = sorted({w["name"] for w in workflows})
        raise RunbookError(
            f"Pipeline #{number} has no workflow named {name!r}; its workflows are: "
            + ", ".join(repr(n) for n in names),
            id="workflow-not-found",
            where=f"{config.path}, field circleci.workflow",
            fix="set circleci.workflow to the name of the workflow in .circleci/config.yml (one of those above)",
        )
    workflow = max(named, key=lambda w: w.get("created_at") or "")
    url = client.web_url(config.circleci.project_slug, number, workflow["id"])
    return Target(pipeline, workflow, url, False, tuple(w["id"] for w in workflows))


# -- rerun -------------------------------------------------------------------------------------


def waiting_approvals(jobs: list[dict]) -> list[str]:
    """Names of the approval jobs that wait for a person (status ``on_hold``)."""
    return [j["name"] for j in jobs if j.get("type") == circleci.JOB_TYPE_APPROVAL and j["status"] == circleci.ON_HOLD]


def approve_command(environment: Environment, names: list[str]) -> str:
    """The command that approves the (first) waiting job: ``inv ci.approve --env stg --job hold``."""
    job = f" --job {shlex.quote(names[0])}" if len(names) == 1 else ""
    return f"inv ci.approve --env {shlex.quote(environment.name)}{job}"


@dataclass(frozen=True)
class Approval:
    """The approval job a ``ci.approve`` acts on: its name, its status now, and the job as listed."""

    name: str
    status: str
    job: dict


def approval_choice(target: Target, environment: Environment, jobs: list[dict], name: str | None = None) -> Approval:
    """Pick the approval job to approve in *target*'s workflow.

    Args:
        jobs: the workflow's jobs (``CircleCIClient.jobs``).
        name: the ``--job`` the user named, or None for "the one that waits".

    Returns an Approval whose status is ``on_hold`` (approve it) or ``success`` (already approved).
    Raises RunbookError, changing nothing, when the workflow has no such approval job, several wait
    and none was named, or the job is neither waiting nor approved (blocked behind other jobs,
    canceled...).
    """
    where = target.url
    label = f"workflow {target.workflow['name']} of pipeline #{target.pipeline.get('number')}"
    approvals = [j for j in jobs if j.get("type") == circleci.JOB_TYPE_APPROVAL]
    names = ", ".join(j["name"] for j in approvals)
    if not approvals:
        raise RunbookError(f"Nothing to approve: {label} has no approval job", id="approval-refused", where=where,
                           fix=f"`inv ci.status --env {shlex.quote(environment.name)}` shows its jobs")
    if name is not None:
        found = [j for j in approvals if j["name"] == name]
        if not found:
            build = any(j["name"] == name for j in jobs)
            raise RunbookError(
                f"Not approving: {label} has no approval job named {name!r}"
                + (" (that is a build job)" if build else "") + f"; its approval jobs: {names}; nothing was changed",
                id="approval-refused",
                where=where, fix=approve_command(environment, [approvals[0]["name"]]))
        job = found[0]
    else:
        waiting = [j for j in approvals if j["status"] == circleci.ON_HOLD]
        if len(waiting) > 1:
            raise RunbookError(
                f"Not approving: several approval jobs of {label} wait ({', '.join(j['name'] for j in waiting)}); "
                "name one with --job; nothing was changed",
                id="approval-refused",
                where=where, fix=approve_command(environment, [waiting[0]["name"]]))
        if waiting:
            job = waiting[0]
        elif all(j["status"] == circleci.SUCCESS for j in approvals):
            return Approval(names, circleci.SUCCESS, approvals[0])
        else:
            job = approvals[0] if len(approvals) == 1 else None
            if job is None:
                states = ", ".join(f"{j['name']} {j['status']}" for j in approvals)
                raise RunbookError(f"Not approving: no approval job of {label} waits ({states}); nothing was changed",
                                   id="approval-refused",
                                   where=where, fix=f"`inv ci.status --env {shlex.quote(environment.name)}`; approve "
                                   "once the job is on hold")
    status = job["status"]
    if status in (circleci.ON_HOLD, circleci.SUCCESS):
        return Approval(job["name"], status, job)
    why = " (it waits for the jobs before it)" if status == circleci.BLOCKED else ""
    raise RunbookError(
        f"Not approving: approval job {job['name']} of {label} is {status}{why}, not on hold; nothing was changed",
        id="approval-refused",
        where=where,
        fix=f"`inv ci.status --env {shlex.quote(environment.name)}` shows it; approve once it is on hold",
    )


def rerun_refusal(
    target: Target, environment: Environment, *, from_start: bool = False, jobs: list[dict] | None = None
) -> RunbookError | None:
    """Why a rerun would be wrong now, with what to do instead; None when it is right.

    A rerun from failed is for ``failed`` only. ``error`` and ``canceled`` are refused, naming the
    status, unless *from_start* (the whole workflow again). CircleCI refuses a rerun of a running
    workflow (400); an on-hold workflow waits for an approval (named from *jobs* when given), and
    an unauthorized one lacks a restricted context.
    """
    status, url, env = target.status, target.url, shlex.quote(environment.name)
    waiting = waiting_approvals(jobs or [])
    advice = {
        circleci.SUCCESS: ("succeeded: there is nothing to rerun",
                           f"nothing to do; `inv ci.status --env {env}` shows it"),
        circleci.RUNNING: ("is still running",
                           f"`inv ci.rerun --env {env} --wait` waits for it to stop and reruns it only if it fails"),
        circleci.FAILING: ("is failing: a job failed while others still run",
                           f"`inv ci.rerun --env {env} --wait` waits for it to stop, then reruns it from failed"),
        circleci.ON_HOLD: ("is on hold, waiting at approval job " + ", ".join(waiting) if waiting
                           else "is on hold, waiting at an approval job",
                           f"approve it: {approve_command(environment, waiting)} (or in the CircleCI app: {url})"),
        circleci.NOT_RUN: ("did not run (its filters excluded it)", "push a commit to the branch to start a pipeline"),
        circleci.UNAUTHORIZED: ("is unauthorized: the user who triggered it lacks access to a restricted context",
                                "ask a CircleCI organisation admin to grant the context, then rerun in the app"),
        circleci.ERROR: ("ended with status error (CircleCI could not run it, e.g. a configuration or "
                         "infrastructure error); a rerun from failed is only for a failed workflow",
                         f"read it in the CircleCI app ({url}); to run it again from the start: "
                         f"inv ci.rerun --env {env} --from-start"),
        circleci.CANCELED: ("was canceled; a rerun from failed is only for a failed workflow",
                            f"to run it again from the start: inv ci.rerun --env {env} --from-start"),
    }
    allowed = circleci.RERUN_FROM_START_STATUSES if from_start else circleci.RERUN_FROM_FAILED_STATUSES
    if status in allowed:
        return None
    what, fix = advice.get(status, (f"has status {status!r}", f"check it in the CircleCI app: {url}"))
    return RunbookError(f"Not rerunning: workflow {target.workflow.get('name')} of pipeline "
                        f"#{target.pipeline.get('number')} {what}; nothing was changed",
                        id="rerun-refused", where=url, fix=fix)


def rerun(client: circleci.CircleCIClient, target: Target, *, from_start: bool = False) -> str:
    """Rerun *target*'s workflow (from failed, or from the start); the new workflow's id.

    One rerun at most: see :meth:`runbook.circleci.CircleCIClient.rerun`.
    """
    return client.rerun(target.workflow, from_failed=not from_start, known=target.known)


IAM_JOB_PREFIXES = ("iam-gate-", "deploy-")


def non_iam_failures(jobs: list[dict]) -> list[str]:
    """Names of failed jobs that are neither the IAM gate nor the deploy: a rerun would not fix those."""
    return [j["name"] for j in jobs if j["status"] in circleci.FAILED_JOB_STATUSES
            and not j["name"].startswith(IAM_JOB_PREFIXES)]


# -- watch -------------------------------------------------------------------------------------


@dataclass
class WatchResult:
    """How a watched workflow ended: its final status, seconds watched, the jobs as last seen, and
    (status ``on_hold``) the names of the approval jobs that wait."""

    status: str
    seconds: float
    jobs: list[dict]
    waiting: list[str] = field(default_factory=list)


def poll_interval(value: float, flag: str = "--poll-s", say: Callable[[str], None] = console.warn) -> float:
    """*value* seconds, raised to :data:`MIN_POLL_S` (saying so) when it is below that floor."""
    if value < MIN_POLL_S:
        say(f"{flag} {value:g} is below the floor of {MIN_POLL_S:g} s (CircleCI asks clients not to poll "
            f"tightly): polling every {MIN_POLL_S:g} s")
        return MIN_POLL_S
    return value


def _age(started: float, now: float) -> str:
    s = int(now - started)
    return f"{s // 60}m{s % 60:02d}s"


def watch(
    client: circleci.CircleCIClient,
    workflow_id: str,
    *,
    poll_s: float = WATCH_POLL_S,
    timeout_s: float = 3600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stream=None,
    stop_on_hold: bool = True,
) -> WatchResult:
    """Poll a workflow until it reaches a terminal status, with a live one-line status.

    Args:
        poll_s: seconds between polls; below :data:`MIN_POLL_S` it is raised to that floor.
        timeout_s: seconds; stop watching after this long.
        stop_on_hold: also return as soon as it waits at an approval job (``on_hold``), naming the
            waiting jobs in ``WatchResult.waiting``: watching would only wait for a person.

    Each poll is two requests (GET workflow, GET its jobs); with the default 10 s that is at most
    12 requests a minute. On a terminal the line is rewritten in place; elsewhere a line is
    printed only when it changes. Ctrl-C stops watching, not the workflow: Interrupted is
    raised naming the command to look again.

    Raises RunbookError after *timeout_s* seconds.
    """
    poll_s = max(float(poll_s), MIN_POLL_S)
    stream = stream or sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    started = clock()
    last = ""
    try:
        while True:
            workflow = client.workflow(workflow_id)
            jobs = client.jobs(workflow_id)
            status = workflow["status"]
            done = sum(1 for j in jobs if j["status"] in circleci.DONE_JOB_STATUSES)
            name = workflow["name"]
            waiting = waiting_approvals(jobs)
            line = f"{name}: {status}  {_age(started, clock())}  jobs {done}/{len(jobs)} done"
            if status == circleci.ON_HOLD and waiting:
                line += "  waiting for approval: " + ", ".join(waiting)
            line = console.one_line(line)  # names come from the API; console.write masks
            if tty:
                console.write(stream, "\r\033[K" + line)
            elif line.split("  ")[0::2] != last.split("  ")[0::2]:
                console.write(stream, line + "\n")
            last = line
            if status in circleci.TERMINAL_WORKFLOW_STATUSES or (stop_on_hold and status == circleci.ON_HOLD):
                if tty:
                    console.write(stream, "\n")
                return WatchResult(status, clock() - started, jobs, waiting)
            if clock() - started + poll_s > timeout_s:
                raise RunbookError(
                    f"Stopped watching after {timeout_s:.0f} s; the workflow is still {status}",
                    id="watch-timeout",
                    fix="look again later with `inv ci.status`",
                )
            sleep(poll_s)
    except KeyboardInterrupt:
        if tty:
            console.write(stream, "\n")
        raise Interrupted("Stopped watching (Ctrl-C); the workflow goes on in CircleCI",
                          fix="`inv ci.status` shows where it is") from None


# -- diagnose ----------------------------------------------------------------------------------

IAM_RACE_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"AccessDenied",
        r"not authorized to perform",
        r"cannot be assumed by Lambda",
        r"AssumeRole\w*.*(fail|denied|not authorized|error)",
        r"(fail|unable|error)\w*.*assume\s*role",
        r"role defined for the function cannot be assumed",
        r"IAM gate for \S+ timed out",
    )
]



@dataclass(frozen=True)
class Finding:
    """One failed job and what it says: class "iam-race" or "other", the step and the matching line."""

    job: str
    kind: str
    step: str = ""
    line: str = ""
    note: str = ""


def classify_line(text: str) -> bool:
    """Whether one line of output looks like an IAM race (AccessDenied, role cannot be assumed...)."""
    return any(p.search(text) for p in IAM_RACE_PATTERNS)


def diagnose(client: circleci.CircleCIClient, config: Config, target: Target, jobs: list[dict]) -> list[Finding]:
    """Classify each failed job of *target*'s workflow.

    For each failed build job: the v1.1 job details (one request), then the output of each failed
    step action (one request each, fetched without the token). The first line that matches
    :data:`IAM_RACE_PATTERNS` makes the job an IAM race. When v1.1 does not serve the project type
    (``circleci/...`` slugs) the job is classified from its name alone: the IAM gate and the deploy
    job failing point at IAM, anything else is "other".
    """
    slug = config.circleci.project_slug
    findings = []
    for job in jobs:
        if job.get("status") not in circleci.FAILED_JOB_STATUSES or job.get("type") == circleci.JOB_TYPE_APPROVAL:
            continue
        name = job.get("name", "?")
        number = job.get("job_number")
        try:
            if number is None:
                raise circleci.StepOutputUnavailable("the job has no job number")
            steps = client.v1_job_steps(slug, number)
        except circleci.StepOutputUnavailable as exc:
            findings.append(_by_name(name, f"step output not available ({exc.what.split(':')[0]})"))
            continue
        found = None
        failed_step = ""
        for step in steps:
            for action in step.get("actions") or []:
                failed = action.get("failed") or action.get("status") == circleci.FAILED
                if not (failed or action.get("exit_code") not in (None, 0)):
                    continue
                failed_step = failed_step or step.get("name", "")
                if not action.get("output_url"):
                    continue
                for message in client.fetch_output(action["output_url"]):
                    for line in str(message.get("message", "")).splitlines():
                        if classify_line(line):
                            found = Finding(name, "iam-race", step.get("name", ""), console.scrub(line))
                            break
                    if found:
                        break
            if found:
                break
        findings.append(found or Finding(name, "other", failed_step, note="no IAM error in the failed step's output"))
    return findings


def _by_name(name: str, note: str) -> Finding:
    if name.startswith("iam-gate"):
        return Finding(name, "iam-race", note=f"{note}; the IAM gate failed: the IAM was not applied in time")
    if name.startswith("deploy"):
        return Finding(name, "iam-race?", note=f"{note}; a failed deploy is often an IAM race: check `inv iam.status`")
    return Finding(name, "other", note=note)


def duration(job: dict) -> str:
    """A job's duration as "1m05s" from started_at/stopped_at, or "" while unknown."""
    try:
        start = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
        stop = datetime.fromisoformat(job["stopped_at"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, ValueError, TypeError):
        return ""
    s = int((stop - start).total_seconds())
    return f"{s // 60}m{s % 60:02d}s"


@dataclass(frozen=True)
class RerunDecision:
    """What to do with a workflow: "rerun", "wait", "none" or "refuse" (then ``error`` says why and what to do)."""

    action: str
    reason: str
    error: RunbookError | None = None


def decide_rerun(target: Target, jobs: list[dict], environment: Environment, *, iam=None, force: bool = False,
                 from_start: bool = False) -> RerunDecision:
    """The one rerun decision (temporary form until the CircleCI adapter lands)."""
    status = target.status
    if status == circleci.SUCCESS:
        return RerunDecision("none", "already succeeded")
    if status in circleci.ACTIVE_WORKFLOW_STATUSES:
        return RerunDecision("wait", "the IAM gate opens by itself once the records match; nothing to rerun")
    if status in circleci.RERUN_FROM_FAILED_STATUSES and not force:
        others = non_iam_failures(jobs)
        if others:
            return RerunDecision("refuse", "", RunbookError(
                f"Pipeline #{target.pipeline.get('number')} {status} in {', '.join(others)}, which is not the IAM gate "
                "or the deploy: a rerun would fail the same way, so nothing was rerun", id="workflow-failed",
                where=target.url, fix=f"inv ci.diagnose --env {environment.name}; fix it and push a new commit"))
    refusal = rerun_refusal(target, environment, from_start=from_start, jobs=jobs)
    return RerunDecision("refuse", "", refusal) if refusal else RerunDecision("rerun", "rerun from failed")
