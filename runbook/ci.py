"""What the runbook knows of a CI system: pipelines, workflows and jobs as small frozen values, their statuses,
and the operations an adapter provides (:class:`Client`). An adapter (:mod:`runbook.circleci` for CircleCI) turns
its API's answers into these values; nothing else sees the API's JSON. The statuses are CircleCI's words
(https://circleci.com/docs/api/v2/, getWorkflowById and listWorkflowJobs)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from runbook.errors import RunbookError

SUCCESS, RUNNING, NOT_RUN, FAILED, ERROR = "success", "running", "not_run", "failed", "error"
FAILING, ON_HOLD, CANCELED, UNAUTHORIZED = "failing", "on_hold", "canceled", "unauthorized"
BLOCKED = "blocked"  # a job waiting for the jobs it requires
#: A workflow in one of these will not change any more (unless rerun).
TERMINAL = frozenset({SUCCESS, FAILED, ERROR, CANCELED, UNAUTHORIZED})
#: A workflow still moving by itself: a watcher waits for these to stop (on_hold waits for a person instead).
MOVING = frozenset({RUNNING, FAILING})
#: Job statuses of a job that ran and did not succeed.
FAILED_JOB = frozenset({FAILED, ERROR, "infrastructure_fail", "timedout", "terminated-unknown"})
APPROVAL = "approval"  # the type of a job that waits for a person


@dataclass(frozen=True)
class Pipeline:
    """One run of the CI configuration for one commit of a branch: its *id*, its *number* as the web app shows it
    (``#412``), the commit (*revision*, 40 hex; "" when unknown), *created_at* (timezone-aware, None when unknown)
    and its *state* (CircleCI's: ``created``, or ``errored`` when its configuration did not compile)."""

    id: str
    number: int
    revision: str = ""
    created_at: datetime | None = None
    state: str = ""


@dataclass(frozen=True)
class Workflow:
    """A workflow of a pipeline (a rerun makes a new one of the same name in the same pipeline): *id*, *name* (as in
    the CI configuration), *status* (one of the above), its pipeline's *pipeline_id* and *pipeline_number*, and
    *created_at* (timezone-aware, None when unknown)."""

    id: str
    name: str
    status: str
    pipeline_id: str
    pipeline_number: int
    created_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    """A job of a workflow: *name* (unique in it), *status* (the workflow statuses, ``blocked``, ``queued``...),
    *type* (``build`` or ``approval``), *job_number* (None until a build job starts), *approval_request_id*
    (what approves an approval job), *started_at* and *stopped_at* (timezone-aware, None until known)."""

    name: str
    status: str
    type: str = "build"
    job_number: int | None = None
    approval_request_id: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None

    @property
    def approval(self) -> bool:
        return self.type == APPROVAL

    @property
    def failed(self) -> bool:
        """Whether it ran and did not succeed."""
        return self.status in FAILED_JOB

    @property
    def duration(self) -> str:
        """``1m05s`` from its start to its stop, "" until both are known."""
        if self.started_at is None or self.stopped_at is None:
            return ""
        s = int((self.stopped_at - self.started_at).total_seconds())
        return f"{s // 60}m{s % 60:02d}s"


@dataclass
class Pages:
    """Filled in by a paged list: ``read`` pages so far, ``more`` when it stopped at its limit with pages unread."""

    read: int = 0
    more: bool = False


class StepOutputUnavailable(RunbookError):
    """The output of a job's steps cannot be read (the project type has no such API, or a link expired)."""

    default_id = "step-output-unavailable"


class Client(Protocol):
    """The operations of a CI adapter for one project (CircleCI's: :class:`runbook.circleci.CircleCIClient`, where
    each is documented). Each raises RunbookError for a failure a user can act on; none prints."""

    def pipelines(self, branch: str | None = None, *, max_pages: int = 1, pages: Pages | None = None
                  ) -> Iterator[Pipeline]: ...  # newest first, a page read as iteration reaches it

    def workflows(self, pipeline_id: str) -> list[Workflow]: ...

    def workflow(self, workflow_id: str) -> Workflow: ...

    def jobs(self, workflow_id: str) -> list[Job]: ...

    def rerun(self, workflow: Workflow, *, from_failed: bool = True, known: Collection[str] = ()) -> str: ...

    def approve(self, workflow_id: str, job: Job) -> bool: ...  # False: it was approved already

    def step_output(self, job: Job) -> Iterator[tuple[str, str]]: ...  # (step, output) of each failed step

    def web_url(self, pipeline_number: int, workflow_id: str = "") -> str: ...
