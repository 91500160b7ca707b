"""A stateful stand-in for the CircleCI API, served on 127.0.0.1 for the whole test suite.

It follows CircleCI's API v2 reference (https://circleci.com/docs/api/v2/), its workflow docs and the
v1.1 job-details docs: API v2 under ``/api/v2`` (``GET /me`` included), the v1.1 job details under
``/api/v1.1``, and the pre-signed step output under ``/output/...`` (on the real service that lives
on another host; here the same server answers it, and refuses any request carrying ``Circle-Token``
to prove the client fetches it without the token).

Usage::

    with CircleCIStandIn() as ci:                       # starts a server on a free port
        p = ci.add_pipeline("gh/acme/acme-api", "staging", "1a2b3c",
                            workflows=[("build-test-deploy", "failed")])
        env = ci.env()                                  # CIRCLECI_TOKEN and CIRCLECI_HOST
        ...
        ci.count("POST", "/api/v2/workflow/*/rerun")    # requests the code under test made

Scenario helpers (all return the objects they make; ids are UUID strings):
    add_project(slug)
    add_pipeline(slug, branch, revision=None, *, workflows=(), created_at=None) -> Pipeline
    add_workflow(pipeline, name, status=None, jobs=None, *, setup=False) -> Workflow
    job(name, status="success", *, requires=(), type="build", outcome="success", steps=None) -> dict
    set_job_status(workflow_id, job_name, status), set_job_outcome(workflow_id, job_name, outcome)
    complete_job(workflow_id, job_name, status): finish a job and start what became ready
    advance(workflow_id=None), finish_workflow(workflow_id, status="success", failed_job=None)
    auto_advance = True: each GET /workflow/{id} moves that workflow one tick (for watchers)
    finish_on_poll = True: each GET /workflow/{id} first runs that workflow to its end (or to an
        approval that waits), so a watcher sees the end at its first poll and never sleeps
    set_steps(workflow_id, job_name, steps)
    fault(pattern, status=None, *, method=None, count=1, retry_after=None, delay=0.0,
          malformed=False, message=None, body=None, processed=False, query=None) -> Fault;  clear_faults()
    project_tokens: tokens that are project API tokens: every v2 call answers them 404
    refused_url() -> a URL on which nothing listens; stop() makes ``url`` refuse as well

Workflow status follows the jobs, as on CircleCI: a failed job with others still running or an
approval waiting gives ``failing``; only failures left gives ``failed``; an approval waiting with
nothing running gives ``on_hold``; any job running or able to run gives ``running``; else
``success``. ``error``, ``canceled``, ``unauthorized`` and ``not_run`` are set explicitly.

Every response carries ``Connection: close`` so each API call is one TCP connection: after
``stop()`` no pooled connection can still be answered, and request counts equal connections.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

DEFAULT_TOKEN = "standin-token-0123456789"
DEFAULT_SLUG = "gh/acme/acme-api"
DEFAULT_APP_URL = "https://app.circleci.com"

FAILED_JOB = frozenset({"failed", "error", "infrastructure_fail", "timedout", "terminated-unknown", "canceled"})
ACTIVE_JOB = frozenset({"running", "queued", "not_running"})
PINNED_WORKFLOW = frozenset({"error", "canceled", "unauthorized", "not_run"})
TERMINAL_WORKFLOW = frozenset({"success", "failed", "error", "canceled", "unauthorized"})
ACTIVE_WORKFLOW = frozenset({"running", "failing", "on_hold"})
RERUN_LIMIT = 100
RERUN_MAX_AGE = timedelta(days=90)

DEFAULT_MESSAGES = {
    400: "Bad request.",
    401: "Invalid token provided.",
    403: "Permission denied.",
    404: "Project not found",
    429: "Rate limit exceeded.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job(
    name: str,
    status: str = "success",
    *,
    requires: Iterable[str] = (),
    type: str = "build",
    outcome: str = "success",
    steps: list[dict] | None = None,
) -> dict:
    """A job spec for :meth:`CircleCIStandIn.add_workflow`.

    Args:
        name: job name, unique in its workflow.
        status: CircleCI job status now (``success``, ``failed``, ``running``, ``blocked``,
            ``on_hold`` for a waiting approval...).
        requires: names of the jobs it depends on (become ``dependencies`` ids).
        type: ``build`` or ``approval``.
        outcome: the status :meth:`CircleCIStandIn.advance` gives it when it finishes running.
        steps: step output, as for :meth:`CircleCIStandIn.set_steps`; None gives default steps.
    """
    return {
        "name": name,
        "status": status,
        "requires": list(requires),
        "type": type,
        "outcome": outcome,
        "steps": steps,
    }


@dataclass
class Job:
    """One job of one workflow (a rerun copies jobs into new Job objects)."""

    id: str
    name: str
    type: str
    status: str
    requires: list[str]
    outcome: str = "success"
    job_number: int | None = None
    approval_request_id: str | None = None
    approved_by: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    steps: list[dict] | None = None


@dataclass
class Workflow:
    """A workflow; ``status`` is recomputed from the jobs unless pinned (error, canceled...)."""

    id: str
    name: str
    pipeline: Pipeline
    jobs: list[Job]
    created_at: datetime
    status: str = "running"
    pinned: str | None = None
    stopped_at: datetime | None = None
    setup: bool = False
    rerun_of: str | None = None
    root_id: str = ""

    def job(self, name: str) -> Job:
        """The job called *name*; KeyError when there is none."""
        for item in self.jobs:
            if item.name == name:
                return item
        raise KeyError(f"workflow {self.name} has no job {name!r}")


@dataclass
class Pipeline:
    """A pipeline of one project on one branch at one revision."""

    id: str
    number: int
    slug: str
    branch: str
    revision: str
    created_at: datetime
    workflows: list[Workflow] = field(default_factory=list)


@dataclass
class Fault:
    """An injected failure: see :meth:`CircleCIStandIn.fault`. ``hits`` counts uses."""

    pattern: str
    method: str | None
    status: int | None
    retry_after: int | str | None
    delay: float
    malformed: bool
    message: str | None
    remaining: int | None
    body: Any = None
    processed: bool = False
    query: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str, args: Any = None) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.query is not None and (args is None or self.query not in args):
            return False
        return fnmatch.fnmatchcase(path, self.pattern)


@dataclass
class LoggedRequest:
    """One request as the stand-in saw it. The token's value is never stored, only its state.

    ``token`` is ``"none"`` (no Circle-Token header), ``"valid"`` or ``"invalid"``. ``raw_uri`` is
    the path and query exactly as sent (to check what was URL-encoded).
    """

    method: str
    path: str
    raw_uri: str
    query: dict[str, str]
    token: str
    body: Any
    status: int = 0
    fault: str | None = None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # the request log is kept in memory
        pass


class CircleCIStandIn:
    """The CircleCI API on 127.0.0.1; a context manager that starts and stops its server.

    Args:
        token: the personal API token it accepts in ``Circle-Token``.
        projects: slugs that exist from the start (``add_pipeline`` adds others).
        page_size: items per page of every list (small in tests to exercise pagination).
        app_url: base of the ``web_url`` of job details.
        project_tokens: tokens that are project API tokens: API v2 answers them 404 everywhere, as
            CircleCI does (project tokens work on the v1 API only).

    Attributes:
        url: ``http://127.0.0.1:PORT`` (what CIRCLECI_HOST should be); ``api_url`` adds ``/api/v2``.
        requests: list of :class:`LoggedRequest`, oldest first.
        auto_advance: when True, every ``GET /workflow/{id}`` of an unfinished workflow answers the
            current state and then calls :meth:`advance` on it, so a watcher that polls sees the
            workflow move to its end without a second thread (default False).
        finish_on_poll: when True, every ``GET /workflow/{id}`` first advances that workflow until it
            ends or waits at an approval, then answers: a watcher sees the end at its first poll,
            with no sleep (default False).
        user: what ``GET /me`` answers for the personal token.
        counts: Counter of ``(method, path)``; ``request_count`` is the total.
        rerun_outcomes: job name -> outcome its copy gets in every rerun (default: a job that
            failed gets outcome ``success``, a fresh chance).
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        projects: Iterable[str] = (DEFAULT_SLUG,),
        page_size: int = 20,
        app_url: str = DEFAULT_APP_URL,
        project_tokens: Iterable[str] = (),
    ) -> None:
        self.token = token
        self.project_tokens = set(project_tokens)
        self.finish_on_poll = False
        self.user = {"id": "5b2a6fe0-0000-4000-8000-000000000001", "login": "acme-dev", "name": "Acme Dev"}
        self.page_size = page_size
        self.app_url = app_url
        self.auto_advance = False
        self.rerun_outcomes: dict[str, str] = {}
        self.projects: dict[str, dict[str, int]] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.workflows: dict[str, Workflow] = {}
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self._jobs_by_number: dict[tuple[str, int], tuple[Workflow, Job]] = {}
        self._outputs: dict[str, list[dict]] = {}
        self._rerun_counts: Counter[str] = Counter()
        self._clock = datetime.now(timezone.utc) - timedelta(days=1)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""
        for slug in projects:
            self.add_project(slug)
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("GET", re.compile(r"/api/v2/me"), self._me),
            ("GET", re.compile(r"/api/v2/project/(?P<slug>.+)/pipeline"), self._list_pipelines),
            ("GET", re.compile(r"/api/v2/project/(?P<slug>.+)/job/(?P<number>\d+)"), self._job_details),
            ("GET", re.compile(r"/api/v2/pipeline/(?P<pid>[^/]+)/workflow"), self._list_workflows),
            ("GET", re.compile(r"/api/v2/pipeline/(?P<pid>[^/]+)"), self._get_pipeline),
            ("GET", re.compile(r"/api/v2/workflow/(?P<wid>[^/]+)"), self._get_workflow),
            ("GET", re.compile(r"/api/v2/workflow/(?P<wid>[^/]+)/job"), self._list_jobs),
            ("POST", re.compile(r"/api/v2/workflow/(?P<wid>[^/]+)/rerun"), self._rerun),
            ("POST", re.compile(r"/api/v2/workflow/(?P<wid>[^/]+)/approve/(?P<rid>[^/]+)"), self._approve),
            (
                "GET",
                re.compile(r"/api/v1\.1/project/(?P<vcs>[^/]+)/(?P<org>[^/]+)/(?P<repo>[^/]+)/(?P<number>\d+)"),
                self._v1_job,
            ),
        ]

    # -- server lifecycle ------------------------------------------------------------

    def start(self) -> CircleCIStandIn:
        """Serve on a free port of 127.0.0.1 in a daemon thread; sets ``url``."""
        self._stopping.clear()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._server.block_on_close = False  # a slow fault must not hold up stop()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="circleci-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port; afterwards ``url`` refuses connections."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CircleCIStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """``url`` + ``/api/v2``."""
        return self.url + "/api/v2"

    def env(self, **extra: str) -> dict[str, str]:
        """Variables pointing a client here: ``CIRCLECI_TOKEN`` and ``CIRCLECI_HOST``, plus *extra*."""
        return {"CIRCLECI_TOKEN": self.token, "CIRCLECI_HOST": self.url, **extra}

    @staticmethod
    def refused_url() -> str:
        """``http://127.0.0.1:PORT`` of a port that was free a moment ago: connections are refused."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # -- counting ----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Requests received so far (all paths, faults included)."""
        return len(self.requests)

    def count(self, method: str | None = None, pattern: str = "*") -> int:
        """Requests whose method is *method* (any when None) and whose path matches the glob *pattern*."""
        with self._lock:
            return sum(
                n
                for (m, path), n in self.counts.items()
                if (method is None or m == method.upper()) and fnmatch.fnmatchcase(path, pattern)
            )

    def reset_log(self) -> None:
        """Forget the request log and counts (state and faults stay)."""
        with self._lock:
            self.requests.clear()
            self.counts.clear()

    # -- scenario building -----------------------------------------------------------

    def _tick(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def add_project(self, slug: str) -> str:
        """Make *slug* exist (any opaque string such as ``circleci/<uuid>/<uuid>``). Returns it."""
        with self._lock:
            self.projects.setdefault(slug, {"pipeline_number": 0, "job_number": 0})
        return slug

    def add_pipeline(
        self,
        slug: str,
        branch: str,
        revision: str | None = None,
        *,
        workflows: Iterable[Any] = (),
        created_at: datetime | None = None,
    ) -> Pipeline:
        """A new pipeline, the newest of its project (numbers count up per project).

        Args:
            slug: project slug; the project is added when unknown.
            branch: ``vcs.branch``.
            revision: ``vcs.revision`` (commit SHA); a random 40-hex string when None.
            workflows: each a workflow name (status follows default jobs: success), a tuple
                ``(name, status)`` or ``(name, status, jobs)``, or a dict of
                :meth:`add_workflow` keyword arguments.
            created_at: timezone-aware time; now-ish when None (set it old to test the 90-day limit).
        """
        with self._lock:
            self.add_project(slug)
            project = self.projects[slug]
            project["pipeline_number"] += 1
            pipeline = Pipeline(
                id=str(uuid.uuid4()),
                number=project["pipeline_number"],
                slug=slug,
                branch=branch,
                revision=revision or uuid.uuid4().hex + uuid.uuid4().hex[:8],
                created_at=created_at or self._tick(),
            )
            self.pipelines[pipeline.id] = pipeline
            for spec in workflows:
                if isinstance(spec, str):
                    self.add_workflow(pipeline, spec)
                elif isinstance(spec, dict):
                    self.add_workflow(pipeline, **spec)
                else:
                    self.add_workflow(pipeline, *spec)
            return pipeline

    def add_workflow(
        self,
        pipeline: Pipeline | str,
        name: str,
        status: str | None = None,
        jobs: Iterable[dict | str] | None = None,
        *,
        setup: bool = False,
    ) -> Workflow:
        """A new workflow in *pipeline* (a Pipeline or its id).

        Args:
            name: workflow name, e.g. ``build-test-deploy``.
            status: the workflow status. With *jobs* given it must agree with them (ValueError
                otherwise) unless it is ``error``, ``canceled``, ``unauthorized`` or ``not_run``,
                which are kept as set. Without *jobs*, default jobs in that state are made:
                build -> test (test failed / running...), on_hold: build -> hold (approval) -> deploy.
            jobs: specs from :func:`job` (or bare names, meaning successful build jobs).
            setup: a setup workflow (dynamic config): CircleCI refuses to rerun it.
        """
        with self._lock:
            if isinstance(pipeline, str):
                pipeline = self.pipelines[pipeline]
            specs = [job(s) if isinstance(s, str) else dict(s) for s in jobs] if jobs is not None else None
            if specs is None:
                specs = self._default_jobs(status or "success")
            workflow = Workflow(
                id=str(uuid.uuid4()),
                name=name,
                pipeline=pipeline,
                jobs=[],
                created_at=max(self._tick(), pipeline.created_at),
                setup=setup,
            )
            workflow.root_id = workflow.id
            ids = {spec["name"]: str(uuid.uuid4()) for spec in specs}
            for spec in specs:
                missing = [r for r in spec.get("requires", ()) if r not in ids]
                if missing:
                    raise ValueError(f"job {spec['name']} requires unknown job(s) {missing}")
                item = Job(
                    id=ids[spec["name"]],
                    name=spec["name"],
                    type=spec.get("type", "build"),
                    status=spec.get("status", "success"),
                    requires=list(spec.get("requires", ())),
                    outcome=spec.get("outcome", "success"),
                    steps=spec.get("steps"),
                )
                if item.type == "approval":
                    item.approval_request_id = str(uuid.uuid4())
                workflow.jobs.append(item)
                self._touch_job(workflow, item)
            if status in PINNED_WORKFLOW:
                workflow.pinned = status
            self._recompute(workflow)
            if status is not None and workflow.status != status:
                raise ValueError(f"jobs give workflow status {workflow.status!r}, not {status!r}")
            pipeline.workflows.append(workflow)
            self.workflows[workflow.id] = workflow
            return workflow

    @staticmethod
    def _default_jobs(status: str) -> list[dict]:
        build = job("build")
        test = {
            "success": "success",
            "running": "running",
            "failed": "failed",
            "error": "failed",
            "canceled": "canceled",
            "unauthorized": "blocked",
            "not_run": "not_run",
        }
        if status in test:
            return [build, job("test", test[status], requires=["build"])]
        if status == "failing":
            return [job("build", "failed"), job("lint", "running")]
        if status == "on_hold":
            return [
                build,
                job("hold", "on_hold", requires=["build"], type="approval"),
                job("deploy", "blocked", requires=["hold"]),
            ]
        raise ValueError(f"unknown workflow status {status!r}")

    def workflow(self, workflow_id: str) -> Workflow:
        """The Workflow with this id (KeyError when unknown)."""
        return self.workflows[workflow_id]

    def latest_workflow(self, pipeline: Pipeline | str, name: str) -> Workflow:
        """The newest workflow called *name* in *pipeline* (after reruns: the rerun)."""
        if isinstance(pipeline, str):
            pipeline = self.pipelines[pipeline]
        return [w for w in pipeline.workflows if w.name == name][-1]

    def set_job_status(self, workflow_id: str, job_name: str, status: str) -> Workflow:
        """Set one job's status now (a build job gets a job number when it leaves ``blocked``)."""
        with self._lock:
            workflow = self.workflows[workflow_id]
            item = workflow.job(job_name)
            item.status = status
            self._touch_job(workflow, item)
            self._recompute(workflow)
            return workflow

    def complete_job(self, workflow_id: str, job_name: str, status: str) -> Workflow:
        """Finish a running job with *status* (``success``, ``failed``...) and start the jobs that became
        ready, as CircleCI does when a job ends (for a test that executes jobs itself)."""
        with self._lock:
            workflow = self.workflows[workflow_id]
            item = workflow.job(job_name)
            item.status = status
            self._touch_job(workflow, item)
            self._start_ready(workflow)
            self._recompute(workflow)
            return workflow

    def set_job_outcome(self, workflow_id: str, job_name: str, outcome: str) -> None:
        """What :meth:`advance` makes of this job when it finishes (``success``, ``failed``...)."""
        with self._lock:
            self.workflows[workflow_id].job(job_name).outcome = outcome

    def set_steps(self, workflow_id: str, job_name: str, steps: list[dict]) -> None:
        """Step output of a job, served by v1.1 job details and the output URLs.

        *steps*: each ``{"name": str, "status": "success"|"failed", "exit_code": int|None,
        "output": str | list of {"message", "time", "type"}}``; a string becomes one message of
        type ``out``.
        """
        with self._lock:
            self.workflows[workflow_id].job(job_name).steps = steps

    def advance(self, workflow_id: str | None = None) -> list[str]:
        """One tick of time for one workflow (or every workflow that is not finished).

        Jobs that are running or queued finish with their outcome (default success); then blocked
        jobs whose dependencies all succeeded start (build jobs run, approval jobs wait on hold).
        Returns the statuses of the workflows advanced.
        """
        with self._lock:
            targets = (
                [self.workflows[workflow_id]]
                if workflow_id
                else [w for w in self.workflows.values() if w.status not in TERMINAL_WORKFLOW]
            )
            for workflow in targets:
                now = self._tick()
                for item in workflow.jobs:
                    if item.status in ACTIVE_JOB:
                        item.status, item.stopped_at = item.outcome, now
                self._start_ready(workflow)
                self._recompute(workflow)
            return [w.status for w in targets]

    def finish_workflow(self, workflow_id: str, status: str = "success", failed_job: str | None = None) -> Workflow:
        """Move a workflow straight to the end.

        ``success``: every job succeeds (approvals count as approved). ``failed``: *failed_job*
        (default: the first job not yet successful) fails, the jobs that depend on it stay
        ``blocked``, the others succeed. ``error``/``canceled``: pinned as given.
        """
        with self._lock:
            workflow = self.workflows[workflow_id]
            now = self._tick()
            if status in PINNED_WORKFLOW:
                workflow.pinned = status
            elif status == "failed":
                name = failed_job or next(j.name for j in workflow.jobs if j.status != "success")
                bad = {name} | self._dependents(workflow, {name})
                for item in workflow.jobs:
                    if item.name == name:
                        item.status = "failed"
                    elif item.name in bad:
                        item.status = "blocked"
                    else:
                        item.status = "success"
                    self._touch_job(workflow, item, now)
            elif status == "success":
                for item in workflow.jobs:
                    item.status = "success"
                    self._touch_job(workflow, item, now)
            else:
                raise ValueError(f"finish_workflow: {status!r} is not a final status")
            self._recompute(workflow)
            return workflow

    def fault(
        self,
        pattern: str,
        status: int | None = None,
        *,
        method: str | None = None,
        count: int | None = 1,
        retry_after: int | str | None = None,
        delay: float = 0.0,
        malformed: bool = False,
        message: str | None = None,
        body: Any = None,
        processed: bool = False,
        query: str | None = None,
    ) -> Fault:
        """Make the next *count* requests whose path matches *pattern* fail.

        Args:
            pattern: glob on the path without query, e.g. ``/api/v2/project/*/pipeline`` or ``*``.
            status: answer this status with ``{"message": ...}`` (401, 404, 429, 500, 503...).
            method: only this method (``GET``/``POST``); any when None.
            count: how many matching requests; None for all of them from now on.
            retry_after: a ``Retry-After`` header value (seconds, or an HTTP date string).
            delay: seconds to wait before answering (a read-timeout test); with no *status* and
                not *malformed*, the request is then answered normally.
            malformed: answer 200 with an HTML body that is not JSON.
            message: the JSON ``message`` (default: CircleCI's usual text for *status*).
            body: answer this JSON instead (status *status*, default 200): an answer of the wrong shape.
            processed: handle the request first (a POST changes the state: a rerun makes its
                workflow), then answer *status* (or, with only *delay*, answer late): a gateway error
                or a timeout after CircleCI acted.
            query: only requests that carry this query parameter (``page-token``: later pages).

        Faults are checked in the order added, before authentication; the first usable one wins.
        Connection refused: use :meth:`refused_url` or :meth:`stop`.
        """
        item = Fault(pattern, method, status, retry_after, delay, malformed, message, count, body, processed, query)
        with self._lock:
            self.faults.append(item)
        return item

    def clear_faults(self) -> None:
        """Remove every injected fault, used or not."""
        with self._lock:
            self.faults.clear()

    # -- state rules -------------------------------------------------------------------

    def _touch_job(self, workflow: Workflow, item: Job, now: datetime | None = None) -> None:
        """Keep times and job numbers in line with a job's status."""
        now = now or self._tick()
        if item.status in ("blocked", "not_run"):
            return
        if item.type == "build" and item.job_number is None:
            project = self.projects[workflow.pipeline.slug]
            project["job_number"] += 1
            item.job_number = project["job_number"]
            self._jobs_by_number[(workflow.pipeline.slug, item.job_number)] = (workflow, item)
        if item.type == "approval" and item.status == "on_hold":
            item.started_at = item.started_at or now
            return
        item.started_at = item.started_at or now
        if item.status not in ACTIVE_JOB:
            item.stopped_at = item.stopped_at or now

    @staticmethod
    def _dependents(workflow: Workflow, names: set[str]) -> set[str]:
        """Names of the jobs that depend on *names*, transitively (not including *names*)."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for item in workflow.jobs:
                if item.name not in found and item.name not in names and set(item.requires) & (names | found):
                    found.add(item.name)
                    changed = True
        return found

    def _start_ready(self, workflow: Workflow) -> None:
        done = {j.name for j in workflow.jobs if j.status == "success"}
        for item in workflow.jobs:
            if item.status == "blocked" and set(item.requires) <= done:
                item.status = "on_hold" if item.type == "approval" else "running"
                self._touch_job(workflow, item)

    @staticmethod
    def _stuck_behind(workflow: Workflow, statuses: frozenset[str] | set[str]) -> set[str]:
        """Jobs in *statuses*, and blocked jobs that wait (transitively) on one of them."""
        found = {j.name for j in workflow.jobs if j.status in statuses}
        changed = True
        while changed:
            changed = False
            for item in workflow.jobs:
                if item.name not in found and item.status == "blocked" and set(item.requires) & found:
                    found.add(item.name)
                    changed = True
        return found

    def _recompute(self, workflow: Workflow) -> None:
        if workflow.pinned:
            status = workflow.pinned
        else:
            # blocked jobs behind a failure never run; blocked jobs behind an approval wait for it
            stuck = self._stuck_behind(workflow, FAILED_JOB) | self._stuck_behind(workflow, {"on_hold"})
            failed = any(j.status in FAILED_JOB for j in workflow.jobs)
            active = any(
                j.status in ACTIVE_JOB or (j.status == "blocked" and j.name not in stuck) for j in workflow.jobs
            )
            hold = any(j.status == "on_hold" for j in workflow.jobs)
            if failed:
                status = "failing" if active or hold else "failed"
            elif active:
                status = "running"
            elif hold:
                status = "on_hold"
            else:
                status = "success"
        workflow.status = status
        if status in TERMINAL_WORKFLOW:
            workflow.stopped_at = workflow.stopped_at or self._tick()
        else:
            workflow.stopped_at = None

    # -- WSGI --------------------------------------------------------------------------

    def _wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        response = self._handle(request)
        response.headers["Connection"] = "close"
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        path = request.path
        method = request.method.upper()
        sent = request.headers.get("Circle-Token")
        token = "none" if sent is None else ("valid" if sent == self.token else "invalid")
        if sent is not None and sent in self.project_tokens:
            token = "project"
        try:
            body = json.loads(request.get_data(as_text=True)) if request.get_data() else None
        except ValueError:
            body = "<not json>"
        entry = LoggedRequest(
            method=method,
            path=path,
            raw_uri=request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or path,
            query=dict(request.args),
            token=token,
            body=body,
        )
        with self._lock:
            self.requests.append(entry)
            self.counts[(method, path)] += 1
            fault = next((f for f in self.faults if f.matches(method, path, request.args)), None)
            if fault is not None:
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
        response = None
        if fault is not None:
            entry.fault = fault.pattern
            if fault.processed:
                response = self._dispatch(request, method, path, token, body)
            if fault.delay:
                self._stopping.wait(fault.delay)
            if fault.body is not None:
                response = self._json(fault.body, fault.status or 200)
            elif fault.malformed:
                response = Response("<html><body>502 Bad Gateway</body></html>", 200, content_type="text/html")
            elif fault.status is not None:
                message = fault.message or DEFAULT_MESSAGES.get(fault.status, "Error.")
                response = self._json({"message": message}, fault.status)
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = str(fault.retry_after)
        if response is None:
            response = self._dispatch(request, method, path, token, body)
        entry.status = response.status_code
        return response

    def _dispatch(self, request: Request, method: str, path: str, token: str, body: Any) -> Response:
        if path.startswith("/output/"):
            return self._output(request, path[len("/output/") :], token)
        if token == "project" and path.startswith("/api/v2/"):
            return self._json({"message": "Project not found" if "/project/" in path else "Not found."}, 404)
        if token != "valid":
            return self._json({"message": "Invalid token provided."}, 401)
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            with self._lock:
                return handler(request=request, body=body, **match.groupdict())
        if allowed:
            return self._json({"message": "Method not allowed."}, 405)
        return self._json({"message": "Not found."}, 404)

    @staticmethod
    def _json(data: Any, status: int = 200) -> Response:
        return Response(json.dumps(data), status, content_type="application/json")

    def _page(self, request: Request, items: list[dict]) -> Response:
        offset = 0
        page_token = request.args.get("page-token")
        if page_token:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(page_token.encode()))["offset"])
            except (ValueError, KeyError, TypeError):
                return self._json({"message": "Invalid page-token."}, 400)
        chunk = items[offset : offset + self.page_size]
        more = offset + self.page_size < len(items)
        next_token = (
            base64.urlsafe_b64encode(json.dumps({"offset": offset + self.page_size}).encode()).decode()
            if more
            else None
        )
        return self._json({"items": chunk, "next_page_token": next_token})

    # -- API v2 ------------------------------------------------------------------------

    def _pipeline_json(self, pipeline: Pipeline) -> dict:
        return {
            "id": pipeline.id,
            "errors": [],
            "project_slug": pipeline.slug,
            "updated_at": _iso(pipeline.created_at),
            "number": pipeline.number,
            "state": "created",
            "created_at": _iso(pipeline.created_at),
            "trigger": {
                "type": "webhook",
                "received_at": _iso(pipeline.created_at),
                "actor": {"login": "acme-dev", "avatar_url": None},
            },
            "vcs": {
                "provider_name": "GitHub",
                "origin_repository_url": "https://github.com/" + "/".join(pipeline.slug.split("/")[1:]),
                "target_repository_url": "https://github.com/" + "/".join(pipeline.slug.split("/")[1:]),
                "revision": pipeline.revision,
                "branch": pipeline.branch,
            },
        }

    def _workflow_json(self, workflow: Workflow) -> dict:
        data = {
            "pipeline_id": workflow.pipeline.id,
            "id": workflow.id,
            "name": workflow.name,
            "project_slug": workflow.pipeline.slug,
            "status": workflow.status,
            "started_by": "5b2a6fe0-0000-4000-8000-000000000001",
            "pipeline_number": workflow.pipeline.number,
            "created_at": _iso(workflow.created_at),
            "stopped_at": _iso(workflow.stopped_at) if workflow.stopped_at else None,
        }
        if workflow.setup:
            data["tag"] = "setup"
        return data

    def _job_json(self, workflow: Workflow, item: Job) -> dict:
        ids = {j.name: j.id for j in workflow.jobs}
        data: dict[str, Any] = {
            "dependencies": [ids[name] for name in item.requires],
            "id": item.id,
            "name": item.name,
            "project_slug": workflow.pipeline.slug,
            "status": item.status,
            "type": item.type,
            "started_at": _iso(item.started_at) if item.started_at else None,
            "stopped_at": _iso(item.stopped_at) if item.stopped_at else None,
        }
        if item.job_number is not None:
            data["job_number"] = item.job_number
        if item.type == "approval":
            data["approval_request_id"] = item.approval_request_id
            if item.approved_by:
                data["approved_by"] = item.approved_by
        return data

    def _project_missing(self, slug: str) -> Response | None:
        if slug not in self.projects:
            return self._json({"message": "Project not found"}, 404)
        return None

    def _list_pipelines(self, request: Request, slug: str, **_: Any) -> Response:
        missing = self._project_missing(slug)
        if missing:
            return missing
        branch = request.args.get("branch")
        items = [p for p in self.pipelines.values() if p.slug == slug and (branch is None or p.branch == branch)]
        items.sort(key=lambda p: p.number, reverse=True)
        return self._page(request, [self._pipeline_json(p) for p in items])

    def _get_pipeline(self, pid: str, **_: Any) -> Response:
        pipeline = self.pipelines.get(pid)
        if pipeline is None:
            return self._json({"message": "Pipeline not found"}, 404)
        return self._json(self._pipeline_json(pipeline))

    def _list_workflows(self, request: Request, pid: str, **_: Any) -> Response:
        pipeline = self.pipelines.get(pid)
        if pipeline is None:
            return self._json({"message": "Pipeline not found"}, 404)
        return self._page(request, [self._workflow_json(w) for w in pipeline.workflows])

    def _me(self, **_: Any) -> Response:
        return self._json(self.user)

    def _get_workflow(self, wid: str, **_: Any) -> Response:
        workflow = self.workflows.get(wid)
        if workflow is None:
            return self._json({"message": "Workflow not found"}, 404)
        for _tick in range(50):
            if not self.finish_on_poll or workflow.status in TERMINAL_WORKFLOW or workflow.status == "on_hold":
                break
            self.advance(wid)
        response = self._json(self._workflow_json(workflow))
        if self.auto_advance and workflow.status not in TERMINAL_WORKFLOW:
            self.advance(wid)  # the next poll sees the next state
        return response

    def _list_jobs(self, request: Request, wid: str, **_: Any) -> Response:
        workflow = self.workflows.get(wid)
        if workflow is None:
            return self._json({"message": "Workflow not found"}, 404)
        return self._page(request, [self._job_json(workflow, j) for j in workflow.jobs])

    def _rerun(self, wid: str, body: Any, **_: Any) -> Response:
        workflow = self.workflows.get(wid)
        if workflow is None:
            return self._json({"message": "Workflow not found"}, 404)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return self._json({"message": "Request body must be a JSON object."}, 400)
        from_failed, job_ids = bool(body.get("from_failed")), body.get("jobs")
        if from_failed and job_ids:
            return self._json({"message": "from_failed cannot be used together with jobs."}, 400)
        if (body.get("enable_ssh") or body.get("sparse_tree")) and not job_ids:
            return self._json({"message": "enable_ssh and sparse_tree require jobs."}, 400)
        if workflow.setup:
            return self._json({"message": "Setup workflows cannot be rerun; trigger a new pipeline."}, 400)
        if workflow.status in ACTIVE_WORKFLOW:
            return self._json({"message": f"Cannot rerun a workflow that is {workflow.status}."}, 400)
        if datetime.now(timezone.utc) - workflow.pipeline.created_at >= RERUN_MAX_AGE:
            return self._json({"message": "Workflows 90 days old or older cannot be rerun."}, 400)
        if self._rerun_counts[workflow.root_id] >= RERUN_LIMIT:
            return self._json({"message": f"This workflow has reached the limit of {RERUN_LIMIT} reruns."}, 400)
        if from_failed:
            chosen = {j.name for j in workflow.jobs if j.status != "success"}
            if not chosen:
                return self._json({"message": "There are no failed jobs to rerun."}, 400)
        elif job_ids:
            by_id = {j.id: j.name for j in workflow.jobs}
            if not isinstance(job_ids, list) or any(i not in by_id for i in job_ids):
                return self._json({"message": "jobs must be ids of jobs of this workflow."}, 400)
            chosen = {by_id[i] for i in job_ids}
        else:
            chosen = {j.name for j in workflow.jobs}
        again = chosen | self._dependents(workflow, chosen)
        self._rerun_counts[workflow.root_id] += 1
        new = Workflow(
            id=str(uuid.uuid4()),
            name=workflow.name,
            pipeline=workflow.pipeline,
            jobs=[],
            created_at=self._tick(),
            setup=workflow.setup,
            rerun_of=workflow.id,
            root_id=workflow.root_id,
        )
        for old in workflow.jobs:
            copy = Job(
                id=str(uuid.uuid4()),
                name=old.name,
                type=old.type,
                status=old.status,
                requires=list(old.requires),
                outcome=old.outcome,
                job_number=old.job_number,
                approval_request_id=str(uuid.uuid4()) if old.type == "approval" else None,
                approved_by=old.approved_by,
                started_at=old.started_at,
                stopped_at=old.stopped_at,
                steps=old.steps,
            )
            if old.name in again:
                copy.status, copy.job_number, copy.approved_by = "blocked", None, None
                copy.started_at = copy.stopped_at = None
                if old.name in self.rerun_outcomes:  # told otherwise: the job fails again
                    copy.outcome = self.rerun_outcomes[old.name]
                elif old.outcome in FAILED_JOB:  # a rerun gets a fresh chance
                    copy.outcome = "success"
            new.jobs.append(copy)
        self._start_ready(new)
        self._recompute(new)
        workflow.pipeline.workflows.append(new)
        self.workflows[new.id] = new
        return self._json({"workflow_id": new.id}, 202)

    def _approve(self, wid: str, rid: str, **_: Any) -> Response:
        workflow = self.workflows.get(wid)
        if workflow is None:
            return self._json({"message": "Workflow not found"}, 404)
        item = next((j for j in workflow.jobs if j.type == "approval" and j.approval_request_id == rid), None)
        if item is None:
            return self._json({"message": "Approval request not found."}, 404)
        if item.status != "on_hold":
            return self._json({"message": f"Approval job {item.name} is {item.status}, not on hold."}, 400)
        item.status, item.approved_by = "success", "5b2a6fe0-0000-4000-8000-000000000001"
        item.stopped_at = self._tick()
        self._start_ready(workflow)
        self._recompute(workflow)
        return self._json({"message": "Accepted."}, 202)

    def _find_job(self, slug: str, number: int) -> tuple[Workflow, Job] | None:
        return self._jobs_by_number.get((slug, number))

    def _job_details(self, slug: str, number: str, **_: Any) -> Response:
        missing = self._project_missing(slug)
        if missing:
            return missing
        found = self._find_job(slug, int(number))
        if found is None:
            return self._json({"message": "Job not found"}, 404)
        workflow, item = found
        web_slug = _web_slug(slug)
        data = {
            "web_url": f"{self.app_url}/pipelines/{web_slug}/{workflow.pipeline.number}/workflows/"
            f"{workflow.id}/jobs/{item.job_number}",
            "project": {"slug": slug, "name": slug.split("/")[-1], "external_url": ""},
            "parallel_runs": [{"index": 0, "status": item.status}],
            "started_at": _iso(item.started_at) if item.started_at else None,
            "latest_workflow": {"id": workflow.id, "name": workflow.name},
            "name": item.name,
            "executor": {"type": "docker", "resource_class": "medium"},
            "parallelism": 1,
            "status": item.status,
            "number": item.job_number,
            "pipeline": {"id": workflow.pipeline.id},
            "duration": None,
            "created_at": _iso(item.started_at or workflow.created_at),
            "messages": [],
            "contexts": [],
            "organization": {"name": slug.split("/")[1]},
            "queued_at": _iso(item.started_at or workflow.created_at),
            "stopped_at": _iso(item.stopped_at) if item.stopped_at else None,
        }
        return self._json(data)

    # -- API v1.1 and output -----------------------------------------------------------

    def _v1_job(self, vcs: str, org: str, repo: str, number: str, **_: Any) -> Response:
        prefixes = {
            "github": ("gh", "github"),
            "gh": ("gh", "github"),
            "bitbucket": ("bb", "bitbucket"),
            "bb": ("bb", "bitbucket"),
        }.get(vcs)
        slug = next((f"{p}/{org}/{repo}" for p in prefixes or () if f"{p}/{org}/{repo}" in self.projects), None)
        if slug is None:
            return self._json({"message": "Project not found"}, 404)
        found = self._find_job(slug, int(number))
        if found is None:
            return self._json({"message": "Build not found"}, 404)
        workflow, item = found
        return self._json(
            {
                "build_num": item.job_number,
                "status": item.status,
                "vcs_revision": workflow.pipeline.revision,
                "branch": workflow.pipeline.branch,
                "workflows": {"workflow_id": workflow.id, "job_name": item.name, "workflow_name": workflow.name},
                "steps": self._steps_json(slug, workflow, item),
            }
        )

    def _steps_json(self, slug: str, workflow: Workflow, item: Job) -> list[dict]:
        steps = item.steps
        if steps is None:
            failed = item.status in FAILED_JOB
            steps = [
                {"name": "Spin up environment", "status": "success", "output": "Starting container\n"},
                {"name": "Checkout code", "status": "success", "output": "Cloning repository\n"},
                {
                    "name": f"Run {item.name}",
                    "status": "failed" if failed else item.status,
                    "exit_code": 1 if failed else 0,
                    "output": f"{item.name}: {'error: step failed' if failed else 'ok'}\n",
                },
            ]
        out = []
        for index, step in enumerate(steps):
            key = f"{slug.replace('/', '~')}~{item.job_number}~{index}"
            output = step.get("output", "")
            if isinstance(output, str):
                output = [{"message": output, "time": _iso(item.started_at or self._clock), "type": "out"}]
            self._outputs[key] = output
            status = step.get("status", "success")
            exit_code = step.get("exit_code", 0 if status == "success" else 1)
            out.append(
                {
                    "name": step["name"],
                    "actions": [
                        {
                            "index": 0,
                            "step": index,
                            "name": step["name"],
                            "type": "test",
                            "status": status,
                            "exit_code": exit_code,
                            "failed": True if status == "failed" else None,
                            "has_output": True,
                            "output_url": f"{self.url}/output/{key}?X-Amz-Expires=3600&X-Amz-Signature="
                            + uuid.uuid4().hex,
                            "start_time": _iso(item.started_at or self._clock),
                            "end_time": _iso(item.stopped_at) if item.stopped_at else None,
                        }
                    ],
                }
            )
        return out

    def _output(self, request: Request, key: str, token: str) -> Response:
        if token != "none":
            return Response("Circle-Token must not be sent to a pre-signed output URL", 400, content_type="text/plain")
        if not request.args.get("X-Amz-Signature"):
            return Response("<Error><Code>AccessDenied</Code></Error>", 403, content_type="application/xml")
        with self._lock:
            output = self._outputs.get(key)
        if output is None:
            return Response("<Error><Code>NoSuchKey</Code></Error>", 404, content_type="application/xml")
        return self._json(output)


def _web_slug(slug: str) -> str:
    """The slug as the web app writes it: ``gh/`` -> ``github/``, ``bb/`` -> ``bitbucket/``."""
    head, _, rest = slug.partition("/")
    return {"gh": "github", "bb": "bitbucket"}.get(head, head) + "/" + rest


def fast_client(ci: CircleCIStandIn, slug: str = DEFAULT_SLUG, **overrides: Any) -> Any:
    """A ``runbook.circleci.CircleCIClient`` for project *slug* aimed at *ci*, with test-sized timeouts and backoff.

    Defaults: token and host from ``ci.env()``, connect 2 s, read 5 s, 3 retries, backoff factor 0.01 s, longest
    wait 2 s. *overrides* replace any constructor argument (``env=`` too).
    """
    from runbook.circleci import CircleCIClient

    kwargs: dict[str, Any] = dict(
        env=ci.env(), connect_timeout=2.0, read_timeout=5.0, retries=3, backoff_factor=0.01, max_wait=2.0
    )
    kwargs.update(overrides)
    return CircleCIClient(slug, **kwargs)
