"""A small CircleCI API v2 client (plus the two v1.1 calls that give step output).

Facts about the API come from /work/shared/reference/circleci-api.md, which restates
CircleCI's API v2 reference, its API developer's guide and the v1.1 job-details docs.

What it does for the caller:

* reads the personal API token from ``CIRCLECI_TOKEN``, then ``CIRCLE_TOKEN``, then
  ``CIRCLECI_CLI_TOKEN`` and sends it only in the ``Circle-Token`` header, to the API host only
  (redirects are not followed, so the header never travels to another host);
* reads the host from ``CIRCLECI_HOST``, then ``CIRCLECI_CLI_HOST``, then the ``circleci.host``
  key of the project configuration, else ``https://circleci.com``;
* retries transient failures with exponential backoff (see :class:`CircleCIClient` for which
  failures are retried for GET and which for POST) and honours ``Retry-After`` on 429;
* turns every failure into a :class:`~runbook.errors.RunbookError` that says what is wrong,
  where, and the command that fixes it. The token never appears in any message, log line or
  exception chain: errors are raised ``from None`` when the cause could carry request objects.

Nothing here prints; the task layer decides what the user sees.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from runbook.config import shown_path
from runbook.errors import RunbookError

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://circleci.com"
DEFAULT_APP_URL = "https://app.circleci.com"
TOKEN_VARIABLES = ("CIRCLECI_TOKEN", "CIRCLE_TOKEN", "CIRCLECI_CLI_TOKEN")
HOST_VARIABLES = ("CIRCLECI_HOST", "CIRCLECI_CLI_HOST")
TOKEN_PAGE = "CircleCI > User settings > Personal API Tokens (https://app.circleci.com/settings/user/tokens)"
SLUG_FIELD = "circleci.project_slug"

# Workflow and job statuses, from the reference doc ("Workflow statuses").
WORKFLOW_STATUSES = frozenset(
    {"success", "running", "not_run", "failed", "error", "failing", "on_hold", "canceled", "unauthorized"}
)
#: A workflow in one of these statuses will not change any more (unless rerun).
TERMINAL_WORKFLOW_STATUSES = frozenset({"success", "failed", "error", "canceled", "unauthorized"})
#: Terminal and not successful: candidates for a rerun from failed.
FAILED_WORKFLOW_STATUSES = frozenset({"failed", "error", "canceled", "unauthorized"})
#: CircleCI refuses a rerun (400) while the workflow is in one of these.
ACTIVE_WORKFLOW_STATUSES = frozenset({"running", "failing", "on_hold"})
JOB_STATUSES = WORKFLOW_STATUSES | frozenset(
    {"queued", "blocked", "not_running", "infrastructure_fail", "timedout", "terminated-unknown", "retried"}
)
#: Job statuses that mean the job ran and did not succeed.
FAILED_JOB_STATUSES = frozenset({"failed", "error", "infrastructure_fail", "timedout", "terminated-unknown"})
JOB_TYPE_BUILD = "build"
JOB_TYPE_APPROVAL = "approval"

#: v1.1 ``vcs-type`` for each OAuth slug prefix; ``circleci/...`` slugs have no v1.1 API.
V1_VCS = {"gh": "github", "github": "github", "bb": "bitbucket", "bitbucket": "bitbucket"}


class StepOutputUnavailable(RunbookError):
    """Step output (API v1.1) cannot be read for this project type.

    Raised by :meth:`CircleCIClient.v1_job_steps` for ``circleci/<org-id>/<project-id>`` slugs
    (GitHub App, GitLab, Bitbucket Data Center projects): v1.1 only knows ``github`` and
    ``bitbucket`` projects. Callers catch it to say "step output not available for this
    project type" and show the job's ``web_url`` instead.
    """


class _Retry(Retry):
    """urllib3 ``Retry`` that gives up instead of sleeping longer than ``max_wait`` seconds.

    urllib3 sleeps for whatever ``Retry-After`` says (up to six hours by default). When the server
    asks for a longer wait than ``max_wait``, :meth:`increment` raises ``MaxRetryError``; with
    ``raise_on_status=False`` urllib3 then hands the 429 response back, and the client reports
    "try again in N s" instead of blocking the terminal.
    """

    def __init__(self, *args: Any, max_wait: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_wait = max_wait

    def new(self, **kw: Any) -> _Retry:
        kw.setdefault("max_wait", self.max_wait)
        return super().new(**kw)

    def get_retry_after(self, response: Any) -> float | None:
        """Seconds from ``Retry-After``; None when absent or unparsable (then backoff applies)."""
        try:
            return super().get_retry_after(response)
        except Exception:  # urllib3 raises InvalidHeader, which requests would not wrap
            return None

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if (
            response is not None
            and self.respect_retry_after_header
            and response.status in self.RETRY_AFTER_STATUS_CODES
        ):
            wait = self.get_retry_after(response)
            if wait is not None and wait > self.max_wait:
                raise MaxRetryError(_pool, url, f"Retry-After {wait:.0f} s is longer than {self.max_wait} s")
        return super().increment(method, url, response, error, _pool, _stacktrace)


def web_url(slug: str, pipeline_number: int, workflow_id: str, host: str = DEFAULT_HOST) -> str:
    """The web app URL of a workflow.

    Args:
        slug: project slug as configured (``gh/org/repo`` or ``circleci/<org-id>/<project-id>``).
        pipeline_number: the pipeline's ``number`` (not its id).
        workflow_id: the workflow's UUID.
        host: API host; for the default ``https://circleci.com`` the app lives at
            ``https://app.circleci.com``, a CircleCI server installation serves the app on its own host.

    Returns ``<app>/pipelines/<slug>/<number>/workflows/<id>``.
    """
    app = DEFAULT_APP_URL if _normalise_host(host) == DEFAULT_HOST else _normalise_host(host)
    return f"{app}/pipelines/{slug}/{int(pipeline_number)}/workflows/{workflow_id}"


def _normalise_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "https://" + host
    return host


def _retry_after_seconds(response: requests.Response, default: int) -> int:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.strip().isdigit() else default


def _find_cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """Search an exception, its ``args``, MaxRetryError reasons and its chain for one of *kinds*."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kinds):
            return item
        todo.extend(item.args)
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
    return None


class CircleCIClient:
    """CircleCI API v2 client with bounded retries and user-facing errors.

    Args:
        config_host: the ``circleci.host`` key of the project configuration, or None. Used when
            neither ``CIRCLECI_HOST`` nor ``CIRCLECI_CLI_HOST`` is set.
        token: a personal API token; None (the normal case) reads ``CIRCLECI_TOKEN``, then
            ``CIRCLE_TOKEN``, then ``CIRCLECI_CLI_TOKEN``. Empty values are skipped.
        env: mapping to read the variables from (default ``os.environ``; tests pass a dict).
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for the server between bytes of the answer.
        retries: total retries per call (so at most ``retries + 1`` requests).
        backoff_factor: seconds; exponential backoff waits 0, 2*f, 4*f, 8*f... between attempts.
        max_wait: seconds; the longest single wait, for backoff and for ``Retry-After``. A 429 whose
            ``Retry-After`` is longer gives up at once with "try again in N s".

    What is retried, and why it differs between GET and POST:

    * GET (reads, safe to repeat): connection errors, read timeouts, 429 and every 5xx.
    * POST (rerun, approve: not idempotent; a duplicate rerun makes a second new workflow):
      connection errors raised *before* the request was sent (refused, DNS, connect timeout),
      429 (a throttled request was not processed) and 502/503/504, which come from the gateway
      in front of the API when the request did not get an answer from it (504 is the one case
      where the API may still have acted; a duplicate there is the accepted cost of not failing a
      release on a load balancer hiccup). Not retried: read timeouts and dropped connections after
      sending, and 500, which means the API itself failed while handling the request and may have
      acted.

    Attributes:
        host: API host, e.g. ``https://circleci.com``; ``host_source`` says where it came from.
        token_source: the variable the token came from (its name only), or ``"argument"``.
        request_count: logical API calls made (one per call, retries not counted), for benchmarks.

    Raises RunbookError (from the constructor) when no token is set or the host is not http(s).
    """

    def __init__(
        self,
        config_host: str | None = None,
        *,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 4,
        backoff_factor: float = 0.5,
        max_wait: float = 60.0,
    ) -> None:
        env = os.environ if env is None else env
        self._token, self.token_source = self._resolve_token(token, env)
        self.host, self.host_source = self._resolve_host(config_host, env)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = int(retries)
        self.max_wait = float(max_wait)
        self.request_count = 0

        common = dict(
            total=self.retries,
            connect=self.retries,
            other=0,
            redirect=0,
            status=self.retries,
            backoff_factor=backoff_factor,
            backoff_max=self.max_wait,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
            max_wait=self.max_wait,
        )
        get_retry = _Retry(
            read=self.retries, allowed_methods={"GET"}, status_forcelist={429, 500, 502, 503, 504}, **common
        )
        post_retry = _Retry(read=0, allowed_methods={"POST"}, status_forcelist={429, 502, 503, 504}, **common)
        self._get = self._session(get_retry, with_token=True)
        self._post = self._session(post_retry, with_token=True)
        self._plain = self._session(get_retry, with_token=False)

    # -- configuration -------------------------------------------------------------------

    @staticmethod
    def _resolve_token(token: str | None, env: Mapping[str, str]) -> tuple[str, str]:
        if token and token.strip():
            return token.strip(), "argument"
        for name in TOKEN_VARIABLES:
            value = (env.get(name) or "").strip()
            if value:
                if not (value.isascii() and value.isprintable() and " " not in value):
                    raise RunbookError(
                        f"The CircleCI token in {name} contains characters a token never has (spaces, line breaks "
                        "or non-ASCII): it was probably pasted with extra text",
                        where=f"the environment variable {name}",
                        fix=f"export {name}=<the token exactly as CircleCI showed it>",
                    )
                return value, name
        raise RunbookError(
            "No CircleCI API token is set: none of " + ", ".join(TOKEN_VARIABLES) + " has a value",
            where="the environment of this shell",
            fix=f"create a personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>",
        )

    @staticmethod
    def _resolve_host(config_host: str | None, env: Mapping[str, str]) -> tuple[str, str]:
        candidates = [(env.get(name), name) for name in HOST_VARIABLES]
        candidates += [(config_host, f"{shown_path()} field circleci.host"), (DEFAULT_HOST, "default")]
        for value, source in candidates:
            if value and value.strip():
                host = _normalise_host(value)
                try:
                    parts = urlsplit(host)
                    valid = parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in host
                    valid = valid and (parts.port is None or 0 < parts.port < 65536)
                    valid = valid and not value.strip().rstrip("/").endswith(":")  # "http://" alone
                except ValueError:
                    valid = False
                if not valid:
                    raise RunbookError(
                        f"The CircleCI host {value.strip()!r} is not an http(s) URL",
                        where=source,
                        fix="set it to the base URL, e.g. export CIRCLECI_HOST=https://circleci.com",
                    )
                return host, source
        raise AssertionError("unreachable: the default host is always set")

    def _session(self, retry: Retry, *, with_token: bool) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept"] = "application/json"
        if with_token:
            session.headers["Circle-Token"] = self._token
        else:
            session.trust_env = False  # no ~/.netrc credentials for pre-signed URLs either
        return session

    def __repr__(self) -> str:
        return f"CircleCIClient(host={self.host!r}, token from {self.token_source})"

    def close(self) -> None:
        """Close the HTTP connection pools."""
        for session in (self._get, self._post, self._plain):
            session.close()

    def __enter__(self) -> CircleCIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def web_url(self, slug: str, pipeline_number: int, workflow_id: str) -> str:
        """The web app URL of a workflow on this client's host; see module-level :func:`web_url`."""
        return web_url(slug, pipeline_number, workflow_id, host=self.host)

    # -- transport -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    def _send(
        self,
        session: requests.Session,
        method: str,
        url: str,
        shown: str,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request; map transport failures to RunbookError. *shown* names it in errors."""
        netloc = urlsplit(url).netloc
        started = time.monotonic()
        try:
            response = session.request(
                method,
                url,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=session is self._plain,
                **kwargs,
            )
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            error = self._transport_error(exc, method, netloc, shown)
        else:
            log.debug("%s %s -> %s (%.2f s)", method, shown, response.status_code, time.monotonic() - started)
            return response
        raise error from None

    def _transport_error(self, exc: Exception, method: str, netloc: str, shown: str) -> RunbookError:
        log.debug("%s %s failed: %s", method, shown, type(exc).__name__)
        attempts = f" (after {self.retries + 1} attempt(s))"
        after_sending = " (1 attempt: not retried after sending)" if method == "POST" else attempts
        if _find_cause(exc, (ReadTimeoutError, requests.ReadTimeout)) is not None:
            return RunbookError(
                f"CircleCI at {netloc} did not answer {method} {shown} within {self.read_timeout:g} s{after_sending}",
                where=f"{self.host} (from {self.host_source})",
                fix="check the network and https://status.circleci.com, then run the command again",
            )
        if _find_cause(exc, (NewConnectionError, ConnectionRefusedError)) is not None:
            return RunbookError(
                f"Could not connect to CircleCI at {netloc} (connection refused or host unknown){attempts}",
                where=f"{self.host} (from {self.host_source}; CIRCLECI_HOST overrides the others)",
                fix=f"check the address in {self.host_source}; unset CIRCLECI_HOST and CIRCLECI_CLI_HOST "
                "to use the configuration or https://circleci.com",
            )
        if _find_cause(exc, (ConnectTimeoutError, requests.ConnectTimeout)) is not None:
            return RunbookError(
                f"Could not connect to CircleCI at {netloc} within {self.connect_timeout:g} s{attempts}",
                where=f"{self.host} (from {self.host_source}; CIRCLECI_HOST overrides the others)",
                fix=f"check the network or VPN, and the address in {self.host_source}",
            )
        if _find_cause(exc, (ProtocolError,)) is not None:
            return RunbookError(
                f"CircleCI at {netloc} dropped the connection during {method} {shown}{after_sending}",
                where=f"{self.host} (from {self.host_source})",
                fix="run the command again; if it persists check https://status.circleci.com",
            )
        return RunbookError(
            f"{method} {shown} to CircleCI at {netloc} failed: {type(exc).__name__}{after_sending}",
            where=f"{self.host} (from {self.host_source})",
            fix="check the network and https://status.circleci.com, then run the command again",
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        api: str = "/api/v2",
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        not_found: RunbookError | None = None,
        ok: tuple[int, ...] = (200,),
        refused: str | None = None,
    ) -> Any:
        """One API call: send, map the status to RunbookError, decode JSON.

        Args:
            method: "GET" or "POST".
            path: path below *api*, already quoted, e.g. ``/workflow/<id>``.
            params: query parameters (requests encodes them: ``feature/x`` -> ``feature%2Fx``).
            body: JSON body for POST.
            not_found: the error to raise on 404 (each call knows what was not found).
            ok: statuses that count as success.
            refused: text for a 400 answer ("rerun workflow X"); CircleCI's message is appended.
        """
        shown = api + path
        url = self.host + shown
        session = self._post if method == "POST" else self._get
        self.request_count += 1
        response = self._send(session, method, url, shown, params=params, json=body)
        status = response.status_code
        if status in ok:
            return self._decode(response, method, shown)
        message = self._scrub(self._message(response))
        where = f"{method} {self.host}{shown}"
        if status == 401:
            raise RunbookError(
                f"CircleCI rejected the API token from {self.token_source} (401: {message or 'unauthorized'})",
                where=where,
                fix=f"create a new personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>",
            )
        if status == 404 and not_found is not None:
            raise not_found
        if status == 400 and refused:
            raise RunbookError(
                f"CircleCI refused to {refused} (400: {message or 'bad request'})",
                where=where,
                fix="open the workflow in the CircleCI app to see its state, then run the command again",
            )
        if status == 429:
            wait = _retry_after_seconds(response, default=60)
            raise RunbookError(
                f"CircleCI is throttling requests from this token (429); try again in {wait} s",
                where=where,
                fix=f"wait {wait} s and run the command again; avoid polling in parallel",
            )
        if status >= 500:
            tries = self.retries + 1 if method == "GET" or status in (502, 503, 504) else 1
            raise RunbookError(
                f"CircleCI answered {status} to {method} {shown} ({tries} attempt(s)): {message or response.reason}",
                where=where,
                fix="check https://status.circleci.com and run the command again later",
            )
        if status == 403:
            raise RunbookError(
                f"The API token from {self.token_source} may not do {method} {shown} (403: {message})",
                where=where,
                fix="use a token of a user with write access to the project: export CIRCLECI_TOKEN=<token>",
            )
        raise RunbookError(
            f"CircleCI answered {status} to {method} {shown}: {message or response.reason}",
            where=where,
            fix="check the arguments of the command; the CircleCI API v2 reference lists this endpoint",
        )

    @staticmethod
    def _message(response: requests.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            return response.text.strip()[:200]
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"]
        return ""

    def _decode(self, response: requests.Response, method: str, shown: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RunbookError(
                f"CircleCI answered {method} {shown} with {response.status_code} but the body is not JSON "
                f"(Content-Type {response.headers.get('Content-Type', 'none')!r})",
                where=f"{self.host}{shown} (host from {self.host_source})",
                fix="check that CIRCLECI_HOST points at the CircleCI API, or run the command again",
            ) from None

    def _paged(
        self, path: str, params: Mapping[str, str] | None, max_pages: int, not_found: RunbookError
    ) -> Iterator[dict]:
        """Yield the ``items`` of a paged list, following ``next_page_token`` for up to *max_pages*."""
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        query = dict(params or {})
        for page in range(1, max_pages + 1):
            data = self._call("GET", path, params=query, not_found=not_found)
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise RunbookError(
                    f"CircleCI answered GET /api/v2{path} without an 'items' list",
                    where=f"{self.host}/api/v2{path}",
                    fix="check that CIRCLECI_HOST points at the CircleCI API v2",
                )
            yield from data["items"]
            token = data.get("next_page_token")
            if not token:
                return
            if page == max_pages:
                log.debug("GET /api/v2%s: stopping after %d pages; more exist", path, max_pages)
                return
            query["page-token"] = token

    # -- paths and not-found errors ------------------------------------------------------

    @staticmethod
    def _slug_path(slug: str) -> str:
        if not slug or not slug.strip() or slug.strip("/") != slug:
            raise RunbookError(
                f"The CircleCI project slug {slug!r} is empty or has a leading or trailing '/'",
                where=f"{shown_path()} field {SLUG_FIELD}",
                fix="set it to e.g. gh/<org>/<repo> or circleci/<org-id>/<project-id>",
            )
        return quote(slug, safe="/")  # opaque: its slashes stay as they are

    def _project_not_found(self, slug: str) -> RunbookError:
        return RunbookError(
            f"CircleCI project {slug} was not found, or the API token from {self.token_source} cannot see it "
            "(404 Project not found)",
            where=f"{shown_path()} field {SLUG_FIELD}; host {self.host}",
            fix=f"correct {SLUG_FIELD} (the slug is shown in the project's settings in the CircleCI app), "
            "or use a token of a user who can see the project: export CIRCLECI_TOKEN=<token>",
        )

    def _not_found(self, what: str, ident: str) -> RunbookError:
        return RunbookError(
            f"CircleCI has no {what} {ident}, or the token from {self.token_source} cannot see it (404)",
            where=f"{self.host}",
            fix="check the id (copy it from the CircleCI app or from `inv ci.status`)",
        )

    # -- API v2 --------------------------------------------------------------------------

    def pipelines(self, slug: str, branch: str | None = None, max_pages: int = 5) -> Iterator[dict]:
        """Pipelines of a project, newest first (``GET /project/{slug}/pipeline?branch=B``).

        Args:
            slug: project slug, opaque (``gh/org/repo``, ``circleci/<org-id>/<project-id>``).
            branch: only pipelines of this branch (URL-encoded as a query parameter), or None for all.
            max_pages: stop after this many pages (each one request) even if more exist.

        Yields dicts with ``id``, ``number``, ``state``, ``created_at`` and ``vcs`` (``revision``,
        ``branch``). A generator: each page is requested when iteration reaches it, so API errors
        (RunbookError; on 404 naming the slug and ``circleci.project_slug``) are raised while
        iterating; a malformed slug is refused at once.
        """
        params = {"branch": branch} if branch else None
        path = f"/project/{self._slug_path(slug)}/pipeline"
        return self._paged(path, params, max_pages, self._project_not_found(slug))

    def workflows(self, pipeline_id: str, max_pages: int = 10) -> list[dict]:
        """Workflows of a pipeline (``GET /pipeline/{id}/workflow``), as a list.

        Each has ``id``, ``name``, ``status``, ``created_at``, ``stopped_at``, ``pipeline_number``,
        ``project_slug``. A rerun adds a workflow with the same name; pick by ``created_at``.
        """
        path = f"/pipeline/{quote(str(pipeline_id), safe='')}/workflow"
        return list(self._paged(path, None, max_pages, self._not_found("pipeline", pipeline_id)))

    def workflow(self, workflow_id: str) -> dict:
        """One workflow (``GET /workflow/{id}``); same fields as :meth:`workflows`."""
        path = f"/workflow/{quote(str(workflow_id), safe='')}"
        return self._call("GET", path, not_found=self._not_found("workflow", workflow_id))

    def jobs(self, workflow_id: str, max_pages: int = 10) -> list[dict]:
        """Jobs of a workflow (``GET /workflow/{id}/job``), as a list.

        Each has ``id``, ``name``, ``type`` (``build`` or ``approval``), ``status``, ``job_number``
        (absent until a build job starts), ``dependencies`` (job ids), ``started_at``, ``stopped_at``
        and, for approval jobs, ``approval_request_id``.
        """
        path = f"/workflow/{quote(str(workflow_id), safe='')}/job"
        return list(self._paged(path, None, max_pages, self._not_found("workflow", workflow_id)))

    def rerun_from_failed(self, workflow_id: str) -> str:
        """Rerun a workflow from failed (``POST /workflow/{id}/rerun`` with ``{"from_failed": true}``).

        CircleCI makes a NEW workflow in the same pipeline: the failed jobs and the jobs that depend
        on them run again, succeeded jobs keep their results. Returns the new workflow's id.
        Raises RunbookError with CircleCI's message on 400 (for example the workflow is still
        running, or it has been rerun 100 times), and on every other failure.
        """
        path = f"/workflow/{quote(str(workflow_id), safe='')}/rerun"
        data = self._call(
            "POST",
            path,
            body={"from_failed": True},
            ok=(200, 201, 202),
            not_found=self._not_found("workflow", workflow_id),
            refused=f"rerun workflow {workflow_id} from failed",
        )
        if not isinstance(data, dict) or not isinstance(data.get("workflow_id"), str):
            raise RunbookError(
                f"CircleCI accepted the rerun of workflow {workflow_id} but did not say the new workflow's id",
                where=f"POST {self.host}/api/v2{path}",
                fix="find the new workflow in the CircleCI app; do not rerun again before checking",
            )
        return data["workflow_id"]

    def approve(self, workflow_id: str, approval_request_id: str) -> None:
        """Approve a waiting approval job (``POST /workflow/{id}/approve/{approval_request_id}``).

        *approval_request_id* is the ``approval_request_id`` field of the approval job from
        :meth:`jobs`. Raises RunbookError on 400 (already approved, not waiting) with CircleCI's
        message, on 404 and on every other failure.
        """
        path = f"/workflow/{quote(str(workflow_id), safe='')}/approve/{quote(str(approval_request_id), safe='')}"
        self._call(
            "POST",
            path,
            ok=(200, 201, 202),
            not_found=self._not_found("approval request", f"{approval_request_id} in workflow {workflow_id}"),
            refused=f"approve request {approval_request_id} of workflow {workflow_id}",
        )

    def job_details(self, slug: str, job_number: int) -> dict:
        """Details of a job (``GET /project/{slug}/job/{job_number}``), including ``web_url``."""
        path = f"/project/{self._slug_path(slug)}/job/{int(job_number)}"
        return self._call("GET", path, not_found=self._project_not_found(slug))

    # -- API v1.1 and step output --------------------------------------------------------

    def v1_job_steps(self, slug: str, job_number: int) -> list[dict]:
        """Steps of a job from API v1.1 (``GET /api/v1.1/project/{vcs}/{org}/{repo}/{build_num}``).

        Returns the ``steps`` list: each step has ``name`` and ``actions`` (dicts with ``name``,
        ``status``, ``exit_code``, ``failed``, ``output_url``). Pass an action's ``output_url`` to
        :meth:`fetch_output`.

        Raises StepOutputUnavailable for slugs that are not ``gh/``, ``github/``, ``bb/`` or
        ``bitbucket/`` (v1.1 does not serve ``circleci/...`` projects); RunbookError otherwise.
        """
        parts = slug.split("/")
        if len(parts) != 3 or parts[0] not in V1_VCS:
            raise StepOutputUnavailable(
                f"Step output is not available for project {slug}: API v1.1 only serves GitHub OAuth and "
                "Bitbucket Cloud projects (gh/..., bb/...)",
                where=f"{shown_path()} field {SLUG_FIELD}",
                fix="open the job in the CircleCI app to read its output",
            )
        vcs, org, repo = V1_VCS[parts[0]], quote(parts[1], safe=""), quote(parts[2], safe="")
        data = self._call(
            "GET",
            f"/project/{vcs}/{org}/{repo}/{int(job_number)}",
            api="/api/v1.1",
            not_found=self._project_not_found(slug),
        )
        steps = data.get("steps") if isinstance(data, dict) else None
        if not isinstance(steps, list):
            raise RunbookError(
                f"CircleCI answered the v1.1 details of job {job_number} without a 'steps' list",
                where=f"{self.host}/api/v1.1/project/{vcs}/{org}/{repo}/{int(job_number)}",
                fix="open the job in the CircleCI app to read its output",
            )
        return steps

    def fetch_output(self, output_url: str) -> list[dict]:
        """Read one action's output from its pre-signed ``output_url``, WITHOUT the API token.

        The URL points at a storage host, not at the API; it carries its own signature and must
        never receive ``Circle-Token``. Uses a separate session that has no token header and
        ignores ~/.netrc; GET retries apply.

        Returns a list of ``{"message": str, "time": str, "type": "out" | "err"}``.
        Raises RunbookError when the link has expired (403), or the answer is not a JSON array;
        messages name the URL without its query string (which holds the signature).
        """
        parts = urlsplit(output_url)
        if parts.scheme not in ("http", "https"):
            raise RunbookError("The step's output_url is not an http(s) URL", fix="open the job in the CircleCI app")
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.request_count += 1
        response = self._send(self._plain, "GET", output_url, parts.path)
        if response.status_code in (401, 403):
            raise RunbookError(
                f"The output link of this step was refused ({response.status_code}); pre-signed links expire",
                where=shown,
                fix="fetch the job's steps again for a fresh link, or open the job in the CircleCI app",
            )
        if response.status_code != 200:
            raise RunbookError(
                f"Fetching step output answered {response.status_code}",
                where=shown,
                fix="open the job in the CircleCI app to read its output",
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise RunbookError(
                "The step output is not a JSON array of {message, time, type}",
                where=shown,
                fix="open the job in the CircleCI app to read its output",
            )
        return data
