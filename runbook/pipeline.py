"""The CircleCI side of the runbook: pick the workflow, decide about a rerun, watch, diagnose.

Built on :class:`runbook.circleci.CircleCIClient`; facts about the API (statuses,
rerun rules) follow CircleCI's API v2 reference as restated in the project's
reference notes. Nothing here prints except :func:`watch`'s status line.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runbook import circleci, console
from runbook.config import Config, Environment
from runbook.errors import Interrupted, RunbookError

WATCH_POLL_S = 10.0  # two requests per poll (workflow + jobs): 12 requests a minute at most
TROUBLESHOOTING = "TROUBLESHOOTING.md"


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
                               fix=f"export {TIMEOUT_VAR}=30 (or unset it)") from None
    if config.circleci is None:
        raise RunbookError(
            "There is no circleci section in the configuration",
            where=f"{config.path}",
            fix="add circleci.project_slug (e.g. gh/org/repo) and circleci.workflow",
        )
    return circleci.CircleCIClient(config.circleci.host, **kwargs)


class NoPipelineYet(RunbookError):
    """CircleCI has no pipeline (of the branch, or for HEAD) yet: the one failure worth waiting out."""


def find_workflow(
    client: circleci.CircleCIClient, config: Config, environment: Environment, head: str, *, latest: bool = False
) -> Target:
    """The workflow named ``circleci.workflow`` in the newest pipeline of the branch whose commit is *head*.

    Args:
        head: the local HEAD commit (40 hex).
        latest: when no pipeline matches *head*, take the branch's newest pipeline instead of failing.

    Requests: one page of pipelines (more only while no match is found, at most 2 pages), then one
    list of workflows. Raises RunbookError when the branch has no pipeline, none matches *head*
    (naming both commits) or the pipeline has no workflow of that name (naming those it has).
    """
    slug = config.circleci.project_slug
    newest = chosen = None
    for pipeline in client.pipelines(slug, branch=environment.branch, max_pages=2):
        newest = newest or pipeline
        if (pipeline.get("vcs") or {}).get("revision") == head:
            chosen = pipeline
            break
    if newest is None:
        raise NoPipelineYet(
            f"CircleCI has no pipeline for branch {environment.branch} of {slug}",
            where=f"{config.path}, fields circleci.project_slug and environments.{environment.name}.branch",
            fix=f"push the branch (git push origin {environment.branch}) and wait for the pipeline to start",
        )
    if chosen is None:
        if not latest:
            theirs = (newest.get("vcs") or {}).get("revision", "?")
            raise NoPipelineYet(
                f"No pipeline of branch {environment.branch} is for your HEAD {head[:12]}; the newest "
                f"(#{newest.get('number')}) is for {theirs[:12]}",
                fix="git pull --ff-only (your checkout is behind), wait for the pipeline of your commit to start, "
                "or add --latest to act on the newest pipeline anyway",
            )
        chosen = newest
    name = config.circleci.workflow
    workflows = [w for w in client.workflows(chosen["id"]) if w.get("name") == name]
    if not workflows:
        raise RunbookError(
            f"Pipeline #{chosen.get('number')} has no workflow named {name!r}",
            where=f"{config.path}, field circleci.workflow",
            fix="set circleci.workflow to the workflow name in .circleci/config.yml",
        )
    workflow = max(workflows, key=lambda w: w.get("created_at") or "")
    url = client.web_url(slug, chosen.get("number"), workflow["id"])
    return Target(chosen, workflow, url, (chosen.get("vcs") or {}).get("revision") == head)


# -- rerun -------------------------------------------------------------------------------------

RERUNNABLE = frozenset({"failed", "error", "canceled"})


def rerun_refusal(target: Target, environment: Environment) -> RunbookError | None:
    """Why a rerun from failed would be wrong now, with what to do instead; None when it is right.

    CircleCI refuses a rerun of a running workflow (400) and a rerun from failed needs failed jobs;
    an on-hold workflow waits for an approval, and an unauthorized one lacks a restricted context.
    """
    status, url, env = target.status, target.url, environment.name
    advice = {
        "success": ("succeeded: there is nothing to rerun", f"nothing to do; `inv ci.status --env {env}` shows it"),
        "running": ("is still running", f"wait for it: `inv ci.status --env {env}`, then rerun only if it fails"),
        "failing": ("is failing: a job failed while others still run",
                    f"wait until it has stopped (`inv ci.status --env {env}`), then `inv ci.rerun --env {env}`"),
        "on_hold": ("is on hold, waiting at an approval job",
                    f"approve the waiting job in the CircleCI app: {url}"),
        "not_run": ("did not run (its filters excluded it)", "push a commit to the branch to start a pipeline"),
        "unauthorized": ("is unauthorized: the user who triggered it lacks access to a restricted context",
                         "ask a CircleCI organisation admin to grant the context, then rerun in the app"),
    }
    if status in RERUNNABLE:
        return None
    what, fix = advice.get(status, (f"has status {status!r}", f"check it in the CircleCI app: {url}"))
    return RunbookError(f"Not rerunning: workflow {target.workflow.get('name')} of pipeline "
                        f"#{target.pipeline.get('number')} {what}; nothing was changed", where=url, fix=fix)


IAM_JOB_PREFIXES = ("iam-gate-", "deploy-")


def non_iam_failures(jobs: list[dict]) -> list[str]:
    """Names of failed jobs that are neither the IAM gate nor the deploy: a rerun would not fix those."""
    return [j.get("name", "?") for j in jobs if j.get("status") in circleci.FAILED_JOB_STATUSES
            and not str(j.get("name", "")).startswith(IAM_JOB_PREFIXES)]


# -- watch -------------------------------------------------------------------------------------


@dataclass
class WatchResult:
    """How a watched workflow ended: its final status, seconds watched, and the jobs as last seen."""

    status: str
    seconds: float
    jobs: list[dict]


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
    stop_on_hold: bool = False,
) -> WatchResult:
    """Poll a workflow until it reaches a terminal status, with a live one-line status.

    With *stop_on_hold*, also return as soon as it waits at an approval job (``on_hold``):
    watching would only wait for a person.

    Each poll is two requests (GET workflow, GET its jobs); with the default 10 s that is at most
    12 requests a minute. On a terminal the line is rewritten in place; elsewhere a line is
    printed only when it changes. Ctrl-C stops watching, not the workflow: Interrupted is
    raised naming the command to look again.

    Raises RunbookError after *timeout_s* seconds.
    """
    stream = stream or sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    started = clock()
    last = ""
    try:
        while True:
            workflow = client.workflow(workflow_id)
            jobs = client.jobs(workflow_id)
            status = workflow.get("status", "?")
            done = sum(1 for j in jobs if j.get("status") in ("success", *circleci.FAILED_JOB_STATUSES))
            name = workflow.get("name", "workflow")
            line = f"{name}: {status}  {_age(started, clock())}  jobs {done}/{len(jobs)} done"
            if tty:
                stream.write("\r\033[K" + line)
                stream.flush()
            elif line.split("  ")[0::2] != last.split("  ")[0::2]:
                stream.write(line + "\n")
                stream.flush()
            last = line
            if status in circleci.TERMINAL_WORKFLOW_STATUSES or (stop_on_hold and status == "on_hold"):
                if tty:
                    stream.write("\n")
                return WatchResult(status, clock() - started, jobs)
            if clock() - started + poll_s > timeout_s:
                raise RunbookError(
                    f"Stopped watching after {timeout_s:.0f} s; the workflow is still {status}",
                    fix="look again later with `inv ci.status`",
                )
            sleep(poll_s)
    except KeyboardInterrupt:
        if tty:
            stream.write("\n")
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
_AWS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# "secret_access_key=...", "token: ...", "password=..." in someone else's log: keep the name, hide the value
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b([\w.-]*(?:secret|token|passw(?:or)?d|private[_-]?key|credential)[\w.-]*)(\s*[=:]\s*[\"']?)[^\s\"',;]+")
_AWS_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


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


def _clean(line: str) -> str:
    """One line of a CI log made safe to print: secrets masked (this machine's, and anything that
    looks like an AWS key or an assigned secret), terminal escapes and control characters dropped,
    undecodable characters replaced, at most 300 characters."""
    line = _ANSI.sub("", line).encode("utf-8", "replace").decode("utf-8")
    line = "".join(ch for ch in line if ch.isprintable() or ch == "\t").strip()
    line = _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}****", console.mask(line))
    line = _AWS_SECRET_VALUE.sub("****", _AWS_KEY.sub("****", line))
    return line[:300]


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
            for action in step.get("actions", []):
                if not (action.get("failed") or action.get("status") == "failed" or action.get("exit_code") not in
                        (None, 0)):
                    continue
                failed_step = failed_step or step.get("name", "")
                if not action.get("output_url"):
                    continue
                for message in client.fetch_output(action["output_url"]):
                    for line in str(message.get("message", "")).splitlines():
                        if classify_line(line):
                            found = Finding(name, "iam-race", step.get("name", ""), _clean(line))
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
