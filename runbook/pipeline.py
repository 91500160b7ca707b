"""The CI side of the runbook: find the workflow of a commit, decide about a rerun or an approval, watch it, say
why it failed (:func:`diagnose`), on :mod:`runbook.ci`'s values through a :class:`runbook.ci.Client`
(:func:`client_for`). The decisions are plain functions of values, shared by ``inv ci.*`` and ``inv release``.
Facts: CircleCI's API v2 reference (https://circleci.com/docs/api/v2/) and workflow docs
(https://circleci.com/docs/workflows/)."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from runbook import ci, circleci, console, records
from runbook.config import Config, Environment
from runbook.errors import EXIT_ON_HOLD, Interrupted, RunbookError

WATCH_POLL_S = 10.0  # seconds; two requests a poll (the workflow, its jobs): 12 a minute at most
#: The shortest interval between polls (seconds), refused below: CircleCI publishes no rate limit and asks clients
#: to avoid tight polling (https://circleci.com/docs/api-developers-guide/).
MIN_POLL_S = 2.0
PIPELINE_PAGES = 10  # pages of a branch's pipelines read at most when looking for HEAD's
CLOCK_SKEW_S = 3600.0  # seconds; a pipeline created this long before HEAD's commit time is not HEAD's
WORKFLOWS_WAIT_S = (1.0, 2.0, 4.0)  # seconds between looks at a new pipeline that lists no workflow yet
TIMEOUT_VAR = "RUNBOOK_HTTP_TIMEOUT_S"
IAM_JOBS = ("iam-gate-", "deploy-")  # the jobs that fail while the IAM of their commit is not applied
RERUN_FROM_FAILED, RERUN_FROM_START, WAIT, NOTHING, REFUSE = (
    "rerun from failed", "rerun from the start", "wait", "nothing to do", "refuse")
IAM_RACE = re.compile(  # a line of a failed step that shows an IAM race
    r"AccessDenied|not authorized to perform|cannot be assumed by Lambda|AssumeRole\w*.*(fail|denied|not authorized|"
    r"error)|(fail|unable|error)\w*.*assume\s*role|role defined for the function cannot be assumed|"
    r"IAM gate for \S+ timed out", re.IGNORECASE)


def client_for(config: Config) -> circleci.CircleCIClient:
    """The CircleCI client of the configured project, announcing its waits through :func:`console.warn`.

    ``$RUNBOOK_HTTP_TIMEOUT_S`` (seconds, above 0 and below 3600) sets the read timeout, for slow networks. Raises
    RunbookError without a circleci section, without a token, or for a timeout that is not such a number.
    """
    try:
        timeout = float(os.environ.get(TIMEOUT_VAR) or 30)
    except ValueError:
        timeout = 0.0
    if not 0 < timeout < 3600:  # also refuses nan and inf
        raise RunbookError(f"{TIMEOUT_VAR}={os.environ[TIMEOUT_VAR]!r} is not a number of seconds between 0 and 3600",
                           id="circleci-setting-invalid", fix=f"export {TIMEOUT_VAR}=30 (or unset it)")
    if config.circleci is None:
        raise RunbookError("There is no circleci section in the configuration", id="config-invalid",
                           where=f"{config.path}", fix="add circleci.project_slug and circleci.workflow")
    return circleci.CircleCIClient(config.circleci.project_slug, config.circleci.host, notify=console.warn,
                                   read_timeout=timeout, connect_timeout=min(5.0, timeout))


@dataclass(frozen=True)
class Target:
    """The workflow a command acts on: its pipeline, the newest workflow of the configured name in it, its web URL,
    whether the pipeline is for the local HEAD, and the ids of all the pipeline's workflows when it was found."""

    pipeline: ci.Pipeline
    workflow: ci.Workflow
    url: str
    matches_head: bool
    known: tuple[str, ...] = ()


class NoPipelineYet(RunbookError):
    """CI has no pipeline (of the branch, or for HEAD) yet: the one failure worth waiting out."""

    default_id = "no-pipeline"


def _stamp(moment: float | datetime | None) -> str:
    moment = datetime.fromtimestamp(moment, timezone.utc) if isinstance(moment, (int, float)) else moment
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else "?"


def find_workflow(client: ci.Client, config: Config, environment: Environment, head: str, *, latest: bool = False,
                  head_time: float | None = None, sleep: Callable[[float], None] = time.sleep,
                  say: Callable[[str], None] = console.say) -> Target:
    """The workflow named ``circleci.workflow`` in the newest pipeline of the environment's branch for *head* (40
    hex; *latest*: else the branch's newest). *head_time*: HEAD's commit time, seconds since the epoch, or None; a
    pipeline created :data:`CLOCK_SKEW_S` s before it is not HEAD's (a commit is pushed after it is made).

    Requests: pages of pipelines up to HEAD's, an older one, or :data:`PIPELINE_PAGES`; its workflows, again after
    each wait of :data:`WORKFLOWS_WAIT_S` (*sleep*, told by *say*) while it lists none. Raises NoPipelineYet when no
    pipeline is for *head* (naming both commits and how far it looked), RunbookError (``workflow-not-found``) when
    it lists no workflow, or none of that name (naming those it has)."""
    pages, horizon, seen = ci.Pages(), None if head_time is None else head_time - CLOCK_SKEW_S, []
    for pipeline in client.pipelines(environment.branch, max_pages=PIPELINE_PAGES, pages=pages):
        seen.append(pipeline)
        older = horizon is not None and pipeline.created_at is not None and pipeline.created_at.timestamp() < horizon
        if pipeline.revision == head or older:
            break  # HEAD's, or older than HEAD's commit: no pipeline further back can be for it
    chosen = seen[-1] if seen and seen[-1].revision == head else seen[0] if seen and latest else None
    branch, newest = shlex.quote(environment.branch), seen[0] if seen else None
    if newest is None:
        raise NoPipelineYet(f"CI has no pipeline for branch {environment.branch} of {config.circleci.project_slug}",
                            where=f"{config.path}, fields circleci.project_slug and environments.{environment.name}."
                            "branch", fix=f"push the branch (git push origin {branch}) and wait for its pipeline")
    if chosen is None:
        looked = f"looked at {len(seen)} pipeline(s), back to #{seen[-1].number} of {_stamp(seen[-1].created_at)}" + (
            f"; stopped after {pages.read} page(s), the limit, with older pipelines unread" if pages.more else "")
        theirs, env = newest.revision[:12] or "?", shlex.quote(environment.name)
        older = head_time is not None and newest.created_at and head_time < newest.created_at.timestamp()
        raise NoPipelineYet(
            f"No pipeline of branch {environment.branch} is for your HEAD {head[:12]}{'' if older else ' yet'}; the "
            f"newest (#{newest.number}, created {_stamp(newest.created_at)}) is for {theirs}; {looked}" + (
                f". Your HEAD (committed {_stamp(head_time)}) is older than the newest pipeline: CI runs a pipeline "
                "for the tip of each push, so a commit pushed together with later ones has none of its own"
                if older else ""),
            fix=f"add --latest to act on pipeline #{newest.number} (`inv ci.status --env {env} --latest`), or check "
            f"out its commit {theirs}" if older else f"push your commit (git push origin {branch}) and wait for its "
            "pipeline to start, or add --latest to act on the newest pipeline anyway")
    for wait in (*WORKFLOWS_WAIT_S, None):
        workflows = client.workflows(chosen.id)
        if workflows or wait is None:
            break
        say(f"  pipeline #{chosen.number} lists no workflows yet (just created?); looking again in {wait:g} s")
        sleep(wait)
    if not workflows:
        raise RunbookError(
            f"Pipeline #{chosen.number} has no workflows yet (waited {sum(WORKFLOWS_WAIT_S):g} s)" + (
                ": its state is errored, so its configuration could not be compiled" * (chosen.state == "errored")),
            id="workflow-not-found", where=client.web_url(chosen.number), fix="open the pipeline in the CircleCI "
            "app: a configuration error shows there (fix .circleci/config.yml); else wait a minute and run again")
    named = [w for w in workflows if w.name == config.circleci.workflow]
    if not named:
        raise RunbookError(
            f"Pipeline #{chosen.number} has no workflow named {config.circleci.workflow!r}; its workflows are: "
            + ", ".join(repr(n) for n in sorted({w.name for w in workflows})), id="workflow-not-found",
            where=f"{config.path}, field circleci.workflow",
            fix="set circleci.workflow to the name of the workflow in .circleci/config.yml (one of those above)")
    workflow = max(named, key=lambda w: w.created_at.timestamp() if w.created_at else 0.0)  # a rerun is newer
    return Target(chosen, workflow, client.web_url(chosen.number, workflow.id), chosen.revision == head,
                  tuple(w.id for w in workflows))


def waiting_approvals(jobs: Sequence[ci.Job]) -> list[str]:
    """Names of the approval jobs that wait for a person (status ``on_hold``)."""
    return [j.name for j in jobs if j.approval and j.status == ci.ON_HOLD]


def approve_command(environment: Environment, names: Sequence[str]) -> str:
    """The command that approves the waiting job: ``inv ci.approve --env stg --job hold`` (--job when one)."""
    return f"inv ci.approve --env {shlex.quote(environment.name)}" + (
        f" --job {shlex.quote(names[0])}" if len(names) == 1 else "")


@dataclass(frozen=True)
class RerunDecision:
    """*action*: RERUN_FROM_FAILED, RERUN_FROM_START, WAIT (it moves), NOTHING (it succeeded: not a failure) or
    REFUSE; *why*: the workflow's state in words; *fix*: what to run; *error*: what a command raises when it does
    not act (REFUSE, or WAIT without waiting): ``rerun-refused``, ``workflow-failed``, ``iam-pending``, ``on-hold``."""

    action: str
    why: str
    fix: str
    error: RunbookError | None = None

    @property
    def rerun(self) -> bool:
        return self.action in (RERUN_FROM_FAILED, RERUN_FROM_START)


def decide_rerun(workflow: ci.Workflow, jobs: Sequence[ci.Job], *, iam: Sequence[records.ScopeStatus] | None,
                 environment: Environment, url: str = "", force: bool = False, from_start: bool = False
                 ) -> RerunDecision:
    """The one rerun decision of ``inv ci.rerun``, ``inv release`` and ``inv ci.diagnose`` (no I/O): *workflow* as
    it is now, its *jobs*, the IAM scopes' statuses *iam* (:func:`runbook.records.examine`; None: not read, not
    checked), the *environment* its advice names, the *url* a refusal points at. ``success``: NOTHING; ``running``,
    ``failing``: WAIT; ``on_hold``: refused (exit 5), naming the approval job; ``failed``: a rerun from failed (or
    *from_start*), refused unless *force* while a job other than ``iam-gate-*`` and ``deploy-*`` failed (a test
    fails again; an infrastructure failure may not) or an IAM step is pending or unreadable; ``error`` and
    ``canceled``: only *from_start*; anything else: refused, saying what to do."""
    env, label = shlex.quote(environment.name), f"workflow {workflow.name} of pipeline #{workflow.pipeline_number}"
    st, where = workflow.status, url or None

    def refused(why: str, fix: str, kind: str = "rerun-refused", action: str = REFUSE) -> RerunDecision:
        return RerunDecision(action, why, fix, RunbookError(
            f"Not rerunning: {label} {why}; nothing was changed", where=where, fix=fix,
            id="on-hold" if kind == "on-hold" else "workflow-failed" if kind == "workflow-failed" else "iam-pending"
            if kind == "iam-pending" else "rerun-refused", code=EXIT_ON_HOLD if kind == "on-hold" else 1))

    if st == ci.SUCCESS:
        return RerunDecision(NOTHING, "succeeded: there is nothing to rerun", f"`inv ci.status --env {env}` shows it")
    if st in ci.MOVING:
        return refused("is still running" if st == ci.RUNNING else "is failing: a job failed while others still run",
                       f"`inv ci.rerun --env {env} --wait` waits for it to stop and reruns it only if it failed",
                       action=WAIT)
    if st == ci.ON_HOLD:
        waiting = waiting_approvals(jobs)
        return refused(f"is on hold (not a failure), waiting at approval job {', '.join(waiting) or '?'}",
                       f"approve it: {approve_command(environment, waiting)} (or approve it in the CircleCI app)",
                       "on-hold")
    if st != ci.FAILED and not (from_start and st in (ci.ERROR, ci.CANCELED)):
        again = f"to run it again from the start: inv ci.rerun --env {env} --from-start"
        return refused(*{
            ci.NOT_RUN: ("did not run (its filters excluded it)", "push a commit to the branch to start a pipeline"),
            ci.UNAUTHORIZED: ("is unauthorized: the user who triggered it lacks access to a restricted context",
                              "ask a CircleCI organisation admin to grant the context, then rerun it in the app"),
            ci.ERROR: ("ended with status error (CircleCI could not run it, e.g. a configuration or infrastructure "
                       "error); a rerun from failed is only for a failed workflow", f"read it in the app; {again}"),
            ci.CANCELED: ("was canceled; a rerun from failed is only for a failed workflow", again),
        }.get(st, (f"has status {st!r}", f"check it in the CircleCI app: {url}")))
    others = [j.name for j in jobs if st == ci.FAILED and j.status == ci.FAILED and not j.name.startswith(IAM_JOBS)]
    if others and not force:
        return refused(f"failed in {', '.join(others)}, which is not the IAM gate or the deploy: a rerun would fail "
                       "the same way", f"fix it and push a new commit; `inv ci.diagnose --env {env}` says why it "
                       "failed (--force reruns it anyway)", "workflow-failed")
    unknown = "; ".join(f"{s.scope.label}: {s.reason}" for s in iam or () if s.state == records.UNKNOWN)
    pending = "; ".join(f"{s.scope.label}: {s.text}" for s in iam or () if s.needed and s.state != records.UNKNOWN)
    if unknown and not force:
        return refused(f"{st}, but whether the IAM for this commit is applied cannot be told ({unknown})",
                       "get read access to the records (aws sso login, AWS_PROFILE), or add --force if you are sure",
                       "iam-pending")
    if pending and not force:
        return refused(f"{st}, but the IAM for this commit is not applied ({pending}): a rerun would fail the same way",
                       f"as an administrator on {environment.branch}: {' && '.join(records.commands(iam, environment))}"
                       f", then `inv ci.rerun --env {env}`", "iam-pending")
    how = RERUN_FROM_START if from_start else RERUN_FROM_FAILED
    return RerunDecision(how, f"{st}: {how}", f"inv ci.rerun --env {env}" + (" --from-start" if from_start else ""))


def approval_choice(workflow: ci.Workflow, jobs: Sequence[ci.Job], environment: Environment,
                    name: str | None = None, *, url: str | None = None) -> ci.Job:
    """The approval job ``inv ci.approve`` acts on: the one named *name* (``--job``), else the one that waits; its
    status is ``on_hold`` (to approve) or ``success`` (approved already). Raises RunbookError (``approval-refused``),
    changing nothing, when there is no such approval job, several wait unnamed, or it is blocked, canceled..."""
    label = f"workflow {workflow.name} of pipeline #{workflow.pipeline_number}"
    approvals = [j for j in jobs if j.approval]
    waiting = [j for j in approvals if j.status == ci.ON_HOLD]

    def refused(why: str, fix: str = f"`inv ci.status --env {shlex.quote(environment.name)}` shows its jobs; "
                "approve once the job is on hold") -> RunbookError:
        return RunbookError(f"Not approving: {why}; nothing was changed", id="approval-refused", where=url, fix=fix)

    if not approvals:
        raise refused(f"{label} has no approval job")
    if name is None and len(waiting) > 1:
        raise refused(f"several approval jobs of {label} wait ({', '.join(j.name for j in waiting)}); name one "
                      "with --job", approve_command(environment, [waiting[0].name]))
    job = next((j for j in approvals if j.name == name), None) if name is not None else (
        waiting or [j for j in approvals if j.status != ci.SUCCESS] or approvals)[0]
    if job is None:
        build = " (that is a build job)" if any(j.name == name for j in jobs) else ""
        raise refused(f"{label} has no approval job named {name!r}{build}; its approval jobs: "
                      + ", ".join(j.name for j in approvals), approve_command(environment, [approvals[0].name]))
    if job.status not in (ci.ON_HOLD, ci.SUCCESS):
        blocked = " (it waits for the jobs before it)" if job.status == ci.BLOCKED else ""
        raise refused(f"approval job {job.name} of {label} is {job.status}{blocked}, not on hold")
    return job


@dataclass(frozen=True)
class WatchResult:
    """How a watch ended: the workflow's status, the seconds watched, and its jobs as last seen."""

    status: str
    seconds: float
    jobs: tuple[ci.Job, ...]

    @property
    def waiting(self) -> list[str]:
        return waiting_approvals(self.jobs)


def watch(client: ci.Client, workflow_id: str, *, poll_s: float = WATCH_POLL_S, timeout_s: float = 3600.0,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          stream=None) -> WatchResult:
    """Poll a workflow every *poll_s* seconds (two requests; :data:`MIN_POLL_S` at least) until it ends or waits at
    an approval job (only a person moves it on), with a status line on *stream* (stdout; rewritten in place on a
    terminal, else a line per change). Raises RunbookError for a *poll_s* below the floor (``flag-invalid``) and
    after *timeout_s* seconds, Interrupted on Ctrl-C (which stops the watch, not the workflow)."""
    if poll_s < MIN_POLL_S:
        raise RunbookError(f"Polling every {poll_s:g} s is below the floor of {MIN_POLL_S:g} s (CircleCI asks "
                           "clients not to poll tightly)", id="flag-invalid", fix=f"--poll-s {MIN_POLL_S:g}")
    stream = stream or sys.stdout
    tty, started, last = hasattr(stream, "isatty") and stream.isatty(), clock(), ""
    try:
        while True:
            workflow, jobs = client.workflow(workflow_id), tuple(client.jobs(workflow_id))
            result = WatchResult(workflow.status, clock() - started, jobs)
            line = (f"{workflow.name}: {workflow.status}  {int(result.seconds) // 60}m{int(result.seconds) % 60:02d}s"
                    f"  jobs {sum(j.failed or j.status == ci.SUCCESS for j in jobs)}/{len(jobs)} done")
            if workflow.status == ci.ON_HOLD and result.waiting:
                line += "  waiting for approval: " + ", ".join(result.waiting)
            line = console.one_line(line)  # names come from the API; console.write masks
            if tty:
                console.write(stream, "\r\033[K" + line)
            elif line.split("  ")[0::2] != last.split("  ")[0::2]:  # a change, not only the time
                console.write(stream, line + "\n")
            last = line
            if workflow.status in ci.TERMINAL or workflow.status == ci.ON_HOLD:
                return result
            if clock() - started + poll_s > timeout_s:
                raise RunbookError(f"Stopped watching after {timeout_s:.0f} s; the workflow is still {workflow.status}",
                                   id="watch-timeout", fix="look again later with `inv ci.status`")
            sleep(poll_s)
    except KeyboardInterrupt as exc:
        raise Interrupted("Stopped watching (Ctrl-C); the workflow goes on in CircleCI",
                          fix="`inv ci.status` shows where it is") from exc
    finally:
        if tty and last:  # end the status line rewritten in place, however the watch ends
            console.write(stream, "\n")


def check_watch(result: WatchResult, environment: Environment, url: str) -> None:
    """Raise the error of a watch that did not end in success: on hold (exit 5, naming the approval job) or ended
    otherwise (pointing at ``inv ci.diagnose``); return after a success."""
    env = shlex.quote(environment.name)
    if result.status == ci.ON_HOLD:
        raise RunbookError(
            f"Stopped watching: the workflow is on hold, waiting at approval job {', '.join(result.waiting) or '?'}; "
            "a person must approve it", id="on-hold", where=url, code=EXIT_ON_HOLD,
            fix=f"{approve_command(environment, result.waiting)} (or approve it in the CircleCI app), then "
            f"`inv ci.status --env {env}`")
    if result.status != ci.SUCCESS:
        raise RunbookError(f"The workflow ended {result.status}", id="workflow-failed", where=url,
                           fix=f"inv ci.diagnose --env {env}")


@dataclass(frozen=True)
class Finding:
    """A failed job: *kind* ``iam-race``, ``iam-race?`` (a deploy without output) or ``other``; its failed step, the
    line that decided (secrets masked) and a note."""

    job: str
    kind: str
    step: str = ""
    line: str = ""
    note: str = ""


def diagnose(client: ci.Client, jobs: Sequence[ci.Job], iam: Sequence[records.ScopeStatus] | None) -> list[Finding]:
    """What each failed build job says. A line of its failed steps' output that matches :data:`IAM_RACE` makes it
    ``iam-race`` (one request for the steps, one per output read, until such a line); so does the IAM gate or the
    deploy failing while an IAM scope of *iam* (statuses, or None) is pending, whatever the output says. Without
    output (:class:`runbook.ci.StepOutputUnavailable`) the gate is ``iam-race``, the deploy ``iam-race?``."""
    pending = "; ".join(f"{s.scope.label}: {s.text}" for s in iam or () if s.needed and s.state != records.UNKNOWN)
    findings = []
    for job in (j for j in jobs if j.failed and not j.approval):
        step, line, read = "", None, True
        try:
            for name, text in client.step_output(job):
                line, step = next((x for x in text.splitlines() if IAM_RACE.search(x)), None), step or name
                if line:
                    step = name
                    break
        except ci.StepOutputUnavailable:
            read = False
        gate, iam_job = job.name.startswith(IAM_JOBS[0]), job.name.startswith(IAM_JOBS)
        note = "no IAM error in the failed step's output" if read else "step output not available"
        if line or iam_job and pending:
            note = "" if line else ("" if read else f"{note}; ") + f"the IAM of this commit is not applied: {pending}"
            findings.append(Finding(job.name, "iam-race", step, console.scrub(line or ""), note))
        elif read or not iam_job:
            findings.append(Finding(job.name, "other", step, note=note))
        else:
            findings.append(Finding(job.name, "iam-race" if gate else "iam-race?", note=f"{note}; " + (
                "the IAM gate failed: the IAM was not applied in time" if gate else "a failed deploy is often an IAM "
                "race: check `inv iam.status`")))
    return findings
