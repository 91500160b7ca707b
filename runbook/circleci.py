"""A small CircleCI API v2 client (plus the two v1.1 calls that give step output).

Facts about the API come from CircleCI's API v2 reference (https://circleci.com/docs/api/v2/),
its API developer's guide (https://circleci.com/docs/api-developers-guide/) and the v1.1
job-details docs (https://circleci.com/docs/api/v1/).

What it does for the caller:

* reads the personal API token from ``CIRCLECI_TOKEN``, then ``CIRCLE_TOKEN``, then
  ``CIRCLECI_CLI_TOKEN`` and sends it only in the ``Circle-Token`` header, to the API host only
  (redirects are not followed, so the header never travels to another host);
* reads the host from ``CIRCLECI_HOST``, then ``CIRCLECI_CLI_HOST``, then the ``circleci.host``
  key of the project configuration, else ``https://circleci.com``;
* retries transient failures with jittered exponential backoff, never at once after a 5xx, and
  honours ``Retry-After`` on 429; each wait is announced through the ``notify`` callback (see
  :class:`CircleCIClient` for which failures are retried for GET and which for POST);
* never POSTs twice blindly: after a POST whose outcome is unknown (5xx, read timeout) it looks
  for what the POST would have made before sending it again (:meth:`CircleCIClient.rerun`);
* checks the shape of every answer it returns, so a malformed answer is a message naming the
  endpoint and the field, not an AttributeError later;
* turns every failure into a :class:`~runbook.errors.RunbookError` that says what is wrong,
  where, and the command that fixes it. The token never appears in any message, log line or
  exception chain: errors are raised ``from None`` when the cause could carry request objects.

Nothing here prints; the task layer decides what the user sees.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from itertools import takewhile
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

# Workflow and job statuses: the one definition the runbook uses (pipeline, release, tasks).
# https://circleci.com/docs/api/v2/ (getWorkflowById, listWorkflowJobs: "status").
SUCCESS = "success"
RUNNING = "running"
NOT_RUN = "not_run"
FAILED = "failed"
ERROR = "error"
FAILING = "failing"
ON_HOLD = "on_hold"
CANCELED = "canceled"
UNAUTHORIZED = "unauthorized"
BLOCKED = "blocked"  # a job waiting for the jobs it requires
WORKFLOW_STATUSES = frozenset({SUCCESS, RUNNING, NOT_RUN, FAILED, ERROR, FAILING, ON_HOLD, CANCELED, UNAUTHORIZED})
#: A workflow in one of these statuses will not change any more (unless rerun).
TERMINAL_WORKFLOW_STATUSES = frozenset({SUCCESS, FAILED, ERROR, CANCELED, UNAUTHORIZED})
#: CircleCI refuses a rerun (400) while the workflow is in one of these.
ACTIVE_WORKFLOW_STATUSES = frozenset({RUNNING, FAILING, ON_HOLD})
#: Still moving by itself: a watcher waits for these to stop (on_hold waits for a person instead).
MOVING_WORKFLOW_STATUSES = frozenset({RUNNING, FAILING})
#: A rerun from failed is offered for these only; ERROR and CANCELED are rerun from the start on request.
RERUN_FROM_FAILED_STATUSES = frozenset({FAILED})
RERUN_FROM_START_STATUSES = frozenset({FAILED, ERROR, CANCELED})
#: Job statuses that mean the job ran and did not succeed.
FAILED_JOB_STATUSES = frozenset({FAILED, ERROR, "infrastructure_fail", "timedout", "terminated-unknown"})
#: Job statuses of a job that has finished (a watcher counts them as done).
DONE_JOB_STATUSES = FAILED_JOB_STATUSES | {SUCCESS}
JOB_TYPE_APPROVAL = "approval"

#: v1.1 ``vcs-type`` for each OAuth slug prefix; ``circleci/...`` slugs have no v1.1 API.
V1_VCS = {"gh": "github", "github": "github", "bb": "bitbucket", "bitbucket": "bitbucket"}


#: A user's login as ``GET /me`` gives it; anything else is not printed.
_PRINTABLE_NAME = re.compile(r"[\w.@-]{1,64}")

# The shapes the runbook relies on, checked on every answer (see check_shape). "name?" is optional
# (absent or null); a dict is an object, [shape] a list of shape.
PIPELINE_SHAPE: dict[str, Any] = {
    "id": str, "number": int, "created_at?": str, "state?": str, "vcs?": {"revision?": str, "branch?": str},
}
WORKFLOW_SHAPE: dict[str, Any] = {
    "id": str, "name": str, "status": str, "created_at?": str, "stopped_at?": str, "pipeline_id?": str,
    "pipeline_number?": int,
}
JOB_SHAPE: dict[str, Any] = {
    "name": str, "status": str, "id?": str, "type?": str, "job_number?": int, "approval_request_id?": str,
    "started_at?": str, "stopped_at?": str,
}
V1_STEP_SHAPE: dict[str, Any] = {
    "name?": str,
    "actions?": [{"name?": str, "status?": str, "exit_code?": int, "failed?": bool, "output_url?": str}],
}


class PageCount:
    """Filled in by a paged list: ``read`` pages so far, and ``more`` when pages were left unread."""

    def __init__(self) -> None:
        self.read = 0
        self.more = False


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}")


def _shape_problem(value: Any, shape: Any, at: str) -> str | None:
    """What is wrong with *value* against *shape* ("items[1].name is null, not a string"), or None."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{at} is {_kind(value)}, not an object"
        for key, sub in shape.items():
            name = key.rstrip("?")
            if value.get(name) is None:
                if key.endswith("?"):
                    continue
                return f"{at}.{name} is {'missing' if name not in value else 'null'}"
            problem = _shape_problem(value[name], sub, f"{at}.{name}")
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{at} is {_kind(value)}, not a list"
        for index, item in enumerate(value):
            problem = _shape_problem(item, shape[0], f"{at}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(value, bool) and shape is not bool or not isinstance(value, shape):
        return f"{at} is {_kind(value)}, not {_kind(shape())}"
    return None


def check_shape(value: Any, shape: Any, endpoint: str, at: str, *, where: str, fix: str | None = None) -> None:
    """Raise MalformedAnswer naming *endpoint* and the first field of *value* that does not fit *shape*.

    Args:
        value: decoded JSON.
        shape: a type (str, int, bool), a dict of field -> shape ("name?" for optional), or [shape].
        endpoint: "GET /api/v2/pipeline/<id>/workflow", for the message.
        at: how to call *value* in the message ("items[2]", "the workflow").
    """
    problem = _shape_problem(value, shape, at)
    if problem:
        raise MalformedAnswer(
            f"CircleCI answered {endpoint} with data of the wrong shape: {problem}",
            where=where,
            fix=fix or "check that CIRCLECI_HOST points at the CircleCI API v2 (https://circleci.com/docs/api/v2/); "
            "if it does, run the command again later and check https://status.circleci.com",
        )


class OutcomeUnknown(RunbookError):
    """A POST was sent but its answer says nothing certain: 5xx, a read timeout, a dropped connection.

    CircleCI may or may not have acted. Callers must look before they POST again
    (:meth:`CircleCIClient.rerun` looks for the new workflow; :meth:`CircleCIClient.approve` re-reads
    the job); never retry it blindly.
    """

    default_id = "circleci-outcome-unknown"


class MalformedAnswer(RunbookError):
    """CircleCI answered 2xx with data of the wrong shape (a field missing, null, or of another type)."""

    default_id = "circleci-malformed-answer"


class StepOutputUnavailable(RunbookError):
    """Step output (API v1.1) cannot be read for this project type.

    Raised by :meth:`CircleCIClient.v1_job_steps` for ``circleci/<org-id>/<project-id>`` slugs
    (GitHub App, GitLab, Bitbucket Data Center projects): v1.1 only knows ``github`` and
    ``bitbucket`` projects. Callers catch it to say "step output not available for this
    project type" and show the job's ``web_url`` instead.
    """

    default_id = "step-output-unavailable"


class _Retry(Retry):
    """urllib3 ``Retry`` with jittered backoff, no immediate retry, a ceiling and an announcement.

    * Backoff: the n-th retry waits a random time between ``f * 2**(n-1)`` and twice that
      (f = ``backoff_factor``), at most ``backoff_max``: never 0, as urllib3's first retry is, so a
      5xx is not hammered at once, and spread out so that clients do not retry in step.
    * ``Retry-After`` (429, 503) is honoured; after a 5xx the wait is at least the backoff.
    * When the server asks for a longer wait than ``max_wait``, :meth:`increment` raises
      ``MaxRetryError``; with ``raise_on_status=False`` urllib3 then hands the 429 response back,
      and the client reports "try again in N s" instead of blocking the terminal.
    * Before each wait, ``notify`` (if set) is called with one line saying why and for how long.
    """

    def __init__(
        self, *args: Any, max_wait: float = 60.0, notify: Callable[[str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_wait = max_wait
        self.notify = notify

    def new(self, **kw: Any) -> _Retry:
        kw.setdefault("max_wait", self.max_wait)
        kw.setdefault("notify", self.notify)
        return super().new(**kw)

    def get_retry_after(self, response: Any) -> float | None:
        """Seconds from ``Retry-After``; None when absent or unparsable (then backoff applies)."""
        try:
            return super().get_retry_after(response)
        except Exception:  # urllib3 raises InvalidHeader, which requests would not wrap
            return None

    def get_backoff_time(self) -> float:
        """Jittered exponential backoff for the current retry (see the class docstring)."""
        errors = len(list(takewhile(lambda h: h.redirect_location is None, reversed(self.history))))
        return backoff_seconds(max(errors, 1), self.backoff_factor, self.backoff_max)

    def sleep(self, response: Any = None) -> None:
        """Wait before the next attempt, saying so through ``notify``."""
        wait = self.get_backoff_time()
        status = getattr(response, "status", None)
        if self.respect_retry_after_header and response is not None:
            asked = self.get_retry_after(response)
            if asked is not None:
                wait = max(asked, wait) if status is not None and status >= 500 else asked
        last = self.history[-1] if self.history else None
        if last is not None and self.notify is not None and wait > 0:
            why = f"answered {last.status}" if last.status else f"failed ({type(last.error).__name__})"
            path = urlsplit(last.url or "").path
            self.notify(f"CircleCI {why} to {last.method} {path}; retrying in {wait:.1f} s")
        if wait > 0:
            time.sleep(wait)

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


class _PostRetry(_Retry):
    """A POST's retry: only a 429 with ``Retry-After`` is resent. urllib3 also resends 413 and 503 when they carry
    ``Retry-After``, but a POST answered 503 may have been processed (its outcome is unknown)."""

    RETRY_AFTER_STATUS_CODES = frozenset({429})


def backoff_seconds(attempt: int, factor: float, ceiling: float) -> float:
    """Seconds to wait before retry number *attempt* (1, 2, ...): random in [b, 2b], b = factor * 2**(attempt-1).

    Capped at *ceiling* seconds. Full randomness in the upper half keeps clients that failed
    together from retrying together (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    base = factor * 2 ** (attempt - 1)
    return float(min(ceiling, base + random.uniform(0, base)))


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
        backoff_factor: seconds; retry n waits a random time in [f * 2**(n-1), 2 * f * 2**(n-1)]
            (0.5-1 s, 1-2 s, 2-4 s... with the default 0.5): never at once.
        max_wait: seconds; the longest single wait, for backoff and for ``Retry-After``. A 429 whose
            ``Retry-After`` is longer gives up at once with "try again in N s".
        notify: called with one line (no secrets) before each wait to retry, e.g.
            "CircleCI answered 503 to GET /api/v2/...; retrying in 1.3 s"; None stays silent.
        sleep: how to wait between the attempts of a POST whose outcome was unknown (tests pass a fake).

    What is retried, and why it differs between GET and POST:

    * GET (reads, safe to repeat): connection errors, read timeouts, 429 and every 5xx.
    * POST (rerun, approve: not idempotent; a duplicate rerun makes a second new workflow):
      the transport retries only what was certainly not processed: connection errors raised
      *before* the request was sent (refused, DNS, connect timeout) and 429. A 5xx, a read timeout
      or a dropped connection after sending raise :class:`OutcomeUnknown`: CircleCI may have acted
      (a 502 can come after the new workflow was made). :meth:`rerun` and :meth:`approve` then look
      at what is there before they POST again.

    Attributes:
        host: API host, e.g. ``https://circleci.com``; ``host_source`` says where it came from.
        token_source: the variable the token came from (its name only), or ``"argument"``.

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
        notify: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        env = os.environ if env is None else env
        self._token, self.token_source = self._resolve_token(token, env)
        self.host, self.host_source = self._resolve_host(config_host, env)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = int(retries)
        self.max_wait = float(max_wait)
        self.backoff_factor = float(backoff_factor)
        self.notify = notify
        self._sleep = sleep

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
            notify=notify,
        )
        get_retry = _Retry(
            read=self.retries, allowed_methods={"GET"}, status_forcelist={429, 500, 502, 503, 504}, **common
        )
        post_retry = _PostRetry(read=0, allowed_methods={"POST"}, status_forcelist={429}, **common)
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
                        id="circleci-token-garbled",
                        where=f"the environment variable {name}",
                        fix=f"export {name}=<the token exactly as CircleCI showed it>",
                    )
                return value, name
        raise RunbookError(
            "No CircleCI API token is set: none of " + ", ".join(TOKEN_VARIABLES) + " has a value",
            id="circleci-no-token",
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
                        id="circleci-setting-invalid",
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
        after_sending = " (CircleCI may have acted)" if method == "POST" else attempts
        unknown = OutcomeUnknown if method == "POST" else RunbookError
        if _find_cause(exc, (ReadTimeoutError, requests.ReadTimeout)) is not None:
            return unknown(
                f"CircleCI at {netloc} did not answer {method} {shown} within {self.read_timeout:g} s{after_sending}",
                id="circleci-outcome-unknown" if method == "POST" else "circleci-unreachable",
                where=f"{self.host} (from {self.host_source})",
                fix="check the network and https://status.circleci.com, then run the command again",
            )
        if _find_cause(exc, (NewConnectionError, ConnectionRefusedError)) is not None:
            return RunbookError(
                f"Could not connect to CircleCI at {netloc} (connection refused or host unknown){attempts}",
                id="circleci-unreachable",
                where=f"{self.host} (from {self.host_source}; CIRCLECI_HOST overrides the others)",
                fix=f"check the address in {self.host_source}; unset CIRCLECI_HOST and CIRCLECI_CLI_HOST "
                "to use the configuration or https://circleci.com",
            )
        if _find_cause(exc, (ConnectTimeoutError, requests.ConnectTimeout)) is not None:
            return RunbookError(
                f"Could not connect to CircleCI at {netloc} within {self.connect_timeout:g} s{attempts}",
                id="circleci-unreachable",
                where=f"{self.host} (from {self.host_source}; CIRCLECI_HOST overrides the others)",
                fix=f"check the network or VPN, and the address in {self.host_source}",
            )
        if _find_cause(exc, (ProtocolError,)) is not None:
            return unknown(
                f"CircleCI at {netloc} dropped the connection during {method} {shown}{after_sending}",
                id="circleci-outcome-unknown" if method == "POST" else "circleci-unreachable",
                where=f"{self.host} (from {self.host_source})",
                fix="run the command again; if it persists check https://status.circleci.com",
            )
        return unknown(
            f"{method} {shown} to CircleCI at {netloc} failed: {type(exc).__name__}{after_sending}",
            id="circleci-outcome-unknown" if method == "POST" else "circleci-unreachable",
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
        not_found: RunbookError | Callable[[], RunbookError] | None = None,
        ok: tuple[int, ...] = (200,),
        refused: str | None = None,
        bad_request: RunbookError | None = None,
    ) -> Any:
        """One API call: send, map the status to RunbookError, decode JSON.

        Args:
            method: "GET" or "POST".
            path: path below *api*, already quoted, e.g. ``/workflow/<id>``.
            params: query parameters (requests encodes them: ``feature/x`` -> ``feature%2Fx``).
            body: JSON body for POST.
            not_found: the error to raise on 404 (each call knows what was not found), or a function
                that makes it (called only on a 404).
            ok: statuses that count as success.
            refused: text for a 400 answer ("rerun workflow X"); CircleCI's message is appended.
            bad_request: the error to raise on 400 instead (a page-token refused).

        Raises OutcomeUnknown for a POST answered 5xx or not answered after sending.
        """
        shown = api + path
        url = self.host + shown
        session = self._post if method == "POST" else self._get
        response = self._send(session, method, url, shown, params=params, json=body)
        status = response.status_code
        if status in ok:
            return self._decode(response, method, shown)
        message = self._scrub(self._message(response))
        where = f"{method} {self.host}{shown}"
        if status == 401:
            raise RunbookError(
                f"CircleCI rejected the API token from {self.token_source} (401: {message or 'unauthorized'})",
                id="circleci-token-rejected",
                where=where,
                fix=f"create a new personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>",
            )
        if status == 404 and not_found is not None:
            raise not_found() if callable(not_found) else not_found
        if status == 400 and bad_request is not None:
            raise bad_request
        if status == 400 and refused:
            raise RunbookError(
                f"CircleCI refused to {refused} (400: {message or 'bad request'})",
                id="circleci-refused",
                where=where,
                fix="open the workflow in the CircleCI app to see its state, then run the command again",
            )
        if status == 429:
            wait = _retry_after_seconds(response, default=60)
            raise RunbookError(
                f"CircleCI is throttling requests from this token (429); try again in {wait} s",
                id="circleci-throttled",
                where=where,
                fix=f"wait {wait} s and run the command again; avoid polling in parallel",
            )
        if status >= 500:
            if method == "POST":
                raise OutcomeUnknown(
                    f"CircleCI answered {status} to {method} {shown}: {message or response.reason} (CircleCI may "
                    "have acted)",
                    where=where,
                    fix="check https://status.circleci.com and run the command again later",
                )
            raise RunbookError(
                f"CircleCI answered {status} to {method} {shown} ({self.retries + 1} attempt(s)): "
                f"{message or response.reason}",
                id="circleci-unreachable",
                where=where,
                fix="check https://status.circleci.com and run the command again later",
            )
        if status == 403:
            raise RunbookError(
                f"The API token from {self.token_source} may not do {method} {shown} (403: {message})",
                id="circleci-token-rejected",
                where=where,
                fix="use a token of a user with write access to the project: export CIRCLECI_TOKEN=<token>",
            )
        raise RunbookError(
            f"CircleCI answered {status} to {method} {shown}: {message or response.reason}",
            id="circleci-error",
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
                id="circleci-malformed-answer",
                where=f"{self.host}{shown} (host from {self.host_source})",
                fix="check that CIRCLECI_HOST points at the CircleCI API, or run the command again",
            ) from None

    def _paged(
        self,
        path: str,
        params: Mapping[str, str] | None,
        max_pages: int,
        not_found: RunbookError | Callable[[], RunbookError],
        shape: Mapping[str, Any],
        pages: PageCount | None = None,
    ) -> Iterator[dict]:
        """Yield the ``items`` of a paged list, following ``next_page_token`` for up to *max_pages*.

        Each item is checked against *shape* (see :func:`check_shape`). A 404 or 400 on a later page
        (its ``page-token``) is a paging failure, reported as such, never as *not_found*. *pages*,
        when given, records how many pages were read and whether more were left unread.
        """
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        query = dict(params or {})
        shown = f"/api/v2{path}"
        for page in range(1, max_pages + 1):
            paging = None if page == 1 else self._paging_failed(shown, page)
            data = self._call("GET", path, params=query, not_found=paging or not_found, bad_request=paging)
            if pages is not None:
                pages.read = page
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise MalformedAnswer(
                    f"CircleCI answered GET {shown} without an 'items' list",
                    where=f"{self.host}{shown}",
                    fix="check that CIRCLECI_HOST points at the CircleCI API v2",
                )
            for index, item in enumerate(data["items"]):
                check_shape(item, shape, f"GET {shown}", f"items[{index}]", where=f"{self.host}{shown}")
            yield from data["items"]
            token = data.get("next_page_token")
            if token is not None and not isinstance(token, str):
                raise MalformedAnswer(
                    f"CircleCI answered GET {shown} with a next_page_token that is a {_kind(token)}, not a string",
                    where=f"{self.host}{shown}",
                    fix="check that CIRCLECI_HOST points at the CircleCI API v2",
                )
            if not token:
                return
            if page == max_pages:
                log.debug("GET %s: stopping after %d pages; more exist", shown, max_pages)
                if pages is not None:
                    pages.more = True
                return
            query["page-token"] = token

    def _paging_failed(self, shown: str, page: int) -> RunbookError:
        return RunbookError(
            f"CircleCI refused page {page} of GET {shown} (its page-token, from page {page - 1}): a paging "
            "failure; the first page was read, so the project and the token are fine",
            id="circleci-paging",
            where=f"{self.host}{shown}",
            fix="run the command again (page tokens are short-lived); if it persists check https://status.circleci.com",
        )

    # -- paths and not-found errors ------------------------------------------------------

    @staticmethod
    def _slug_path(slug: str) -> str:
        if not slug or not slug.strip() or slug.strip("/") != slug:
            raise RunbookError(
                f"The CircleCI project slug {slug!r} is empty or has a leading or trailing '/'",
                id="circleci-project-not-found",
                where=f"{shown_path()} field {SLUG_FIELD}",
                fix="set it to e.g. gh/<org>/<repo> or circleci/<org-id>/<project-id>",
            )
        return quote(slug, safe="/")  # opaque: its slashes stay as they are

    def _project_not_found(self, slug: str) -> Callable[[], RunbookError]:
        """The error for a 404 on a project: asks ``GET /me`` whether the token or the slug is wrong."""

        def explain() -> RunbookError:
            where = f"{shown_path()} field {SLUG_FIELD}; host {self.host}"
            slug_fix = (
                f"correct {SLUG_FIELD}: copy the slug from Project Settings in the CircleCI app. OAuth projects "
                "are gh/<org>/<repo> or bb/<org>/<repo>; GitHub App and GitLab projects are "
                "circleci/<org-id>/<project-id> (the IDs are in Organization Settings and Project Settings)"
            )
            token_fix = f"create a personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>"
            try:
                status, user = self._whoami()
            except RunbookError:
                status, user = None, None
            if status == 200:
                who = f"user {user}" if user else "its user"
                return RunbookError(
                    f"CircleCI project {slug} was not found (404 Project not found). The token from "
                    f"{self.token_source} is a valid personal token (GET /me answered for {who}), so the slug is "
                    "wrong or that user cannot see the project",
                    id="circleci-project-not-found",
                    where=where,
                    fix=f"{slug_fix}; or use a token of a user who can see the project",
                )
            if status in (401, 403, 404):
                return RunbookError(
                    f"CircleCI answered 404 for project {slug}, and GET /me answered {status} to the token from "
                    f"{self.token_source}: it is not a personal API token. API v2 needs a personal token; a "
                    "project API token gets 404",
                    id="circleci-project-not-found",
                    where=f"the environment variable {self.token_source}",
                    fix=token_fix,
                )
            return RunbookError(
                f"CircleCI project {slug} was not found, or the API token from {self.token_source} cannot see it "
                "(404 Project not found). API v2 needs a personal token (a project token gets 404)",
                id="circleci-project-not-found",
                where=where,
                fix=f"{slug_fix}; or {token_fix}",
            )

        return explain

    def _whoami(self) -> tuple[int, str | None]:
        """``GET /me``: (HTTP status, the user's login when 200 and printable). Used to explain a 404."""
        shown = "/api/v2/me"
        response = self._send(self._get, "GET", self.host + shown, shown)
        login = None
        if response.status_code == 200:
            try:
                data = response.json()
            except ValueError:
                data = None
            value = data.get("login") if isinstance(data, dict) else None
            login = value if isinstance(value, str) and _PRINTABLE_NAME.fullmatch(value) else None
        return response.status_code, login

    def _not_found(self, what: str, ident: str) -> RunbookError:
        return RunbookError(
            f"CircleCI has no {what} {ident}, or the token from {self.token_source} cannot see it (404)",
            id="circleci-not-found",
            where=f"{self.host}",
            fix="check the id (copy it from the CircleCI app or from `inv ci.status`)",
        )

    def _say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)

    # -- API v2 --------------------------------------------------------------------------

    def pipelines(
        self, slug: str, branch: str | None = None, max_pages: int = 5, pages: PageCount | None = None
    ) -> Iterator[dict]:
        """Pipelines of a project, newest first (``GET /project/{slug}/pipeline?branch=B``).

        Args:
            slug: project slug, opaque (``gh/org/repo``, ``circleci/<org-id>/<project-id>``).
            branch: only pipelines of this branch (URL-encoded as a query parameter), or None for all.
            max_pages: stop after this many pages (each one request) even if more exist.
            pages: a :class:`PageCount` to learn how many pages were read and whether more exist.

        Yields dicts with ``id`` (str), ``number`` (int), optionally ``state``, ``created_at`` and
        ``vcs`` (``revision``, ``branch``). A generator: each page is requested when iteration
        reaches it, so API errors (RunbookError; on 404 saying whether the token or the slug is
        wrong, after one ``GET /me``) are raised while iterating; a malformed slug is refused at once.
        """
        params = {"branch": branch} if branch else None
        path = f"/project/{self._slug_path(slug)}/pipeline"
        return self._paged(path, params, max_pages, self._project_not_found(slug), PIPELINE_SHAPE, pages)

    def workflows(self, pipeline_id: str, max_pages: int = 10) -> list[dict]:
        """Workflows of a pipeline (``GET /pipeline/{id}/workflow``), as a list.

        Each has ``id``, ``name``, ``status`` (strings; checked), ``created_at``, ``stopped_at``,
        ``pipeline_id``, ``pipeline_number``. A rerun adds a workflow with the same name; pick by
        ``created_at``. A pipeline just created may list none yet.
        """
        path = f"/pipeline/{quote(str(pipeline_id), safe='')}/workflow"
        return list(self._paged(path, None, max_pages, self._not_found("pipeline", pipeline_id), WORKFLOW_SHAPE))

    def workflow(self, workflow_id: str) -> dict:
        """One workflow (``GET /workflow/{id}``); same fields as :meth:`workflows`."""
        path = f"/workflow/{quote(str(workflow_id), safe='')}"
        data = self._call("GET", path, not_found=self._not_found("workflow", workflow_id))
        check_shape(data, WORKFLOW_SHAPE, f"GET /api/v2{path}", "the workflow", where=f"{self.host}/api/v2{path}")
        return data

    def jobs(self, workflow_id: str, max_pages: int = 10) -> list[dict]:
        """Jobs of a workflow (``GET /workflow/{id}/job``), as a list.

        Each has ``name`` and ``status`` (strings; checked), ``id``, ``type`` (``build`` or
        ``approval``), ``job_number`` (absent until a build job starts), ``dependencies`` (job ids),
        ``started_at``, ``stopped_at`` and, for approval jobs, ``approval_request_id``.
        """
        path = f"/workflow/{quote(str(workflow_id), safe='')}/job"
        return list(self._paged(path, None, max_pages, self._not_found("workflow", workflow_id), JOB_SHAPE))

    def rerun(self, workflow: Mapping[str, Any], *, from_failed: bool = True, known: Collection[str] = ()) -> str:
        """Rerun a workflow (``POST /workflow/{id}/rerun``) and return the NEW workflow's id.

        Args:
            workflow: the workflow as listed (``id``; ``name``, ``pipeline_id`` and ``created_at``
                let a POST of unknown outcome be checked).
            from_failed: body ``{"from_failed": true}``: the failed jobs and the jobs that depend on
                them run again, succeeded jobs keep their results. False: ``{}``, the whole workflow
                from the start.
            known: ids of the workflows the pipeline had before this call (never taken for the rerun).

        A rerun makes a new workflow of the same name in the same pipeline. When the POST's outcome
        is unknown (5xx, read timeout: :class:`OutcomeUnknown`), this waits (jittered backoff,
        announced through ``notify``), lists the pipeline's workflows, and returns the new workflow
        if CircleCI made it; only when there is none does it POST again (at most ``retries`` times).
        So one call never makes two reruns.

        Raises RunbookError with CircleCI's message on 400 (for example the workflow is still
        running, or it has been rerun 100 times), and on every other failure.
        """
        workflow_id = str(workflow["id"])
        path = f"/workflow/{quote(workflow_id, safe='')}/rerun"
        what = "from failed" if from_failed else "from the start"
        name, pipeline_id = workflow.get("name"), workflow.get("pipeline_id")
        seen = {*known, workflow_id}
        for attempt in range(1, self.retries + 2):
            try:
                data = self._call(
                    "POST",
                    path,
                    body={"from_failed": True} if from_failed else {},
                    ok=(200, 201, 202),
                    not_found=self._not_found("workflow", workflow_id),
                    refused=f"rerun workflow {workflow_id} {what}",
                )
            except OutcomeUnknown as exc:
                if not (isinstance(name, str) and isinstance(pipeline_id, str)):
                    raise OutcomeUnknown(exc.what, where=exc.where, fix="do not rerun again before checking: "
                                         "`inv ci.status` shows whether a new workflow started") from None
                wait = backoff_seconds(attempt, self.backoff_factor, self.max_wait)
                self._say(f"{exc.what}; looking for the new workflow in {wait:.1f} s before deciding whether to "
                          "POST again")
                self._sleep(wait)
                made = self._new_workflow(pipeline_id, name, seen, workflow.get("created_at"))
                if made is not None:
                    self._say(f"CircleCI had made the rerun (workflow {made}); not POSTing again")
                    return made
                if attempt > self.retries:
                    raise RunbookError(
                        f"{exc.what}; after {attempt} attempt(s) pipeline {pipeline_id} has no new workflow "
                        f"{name}: nothing was rerun",
                        id="circleci-outcome-unknown",
                        where=exc.where,
                        fix="check https://status.circleci.com, then run the command again",
                    ) from None
                self._say(f"pipeline {pipeline_id} has no new workflow {name}: POSTing the rerun again")
                continue
            if not isinstance(data, dict) or not isinstance(data.get("workflow_id"), str):
                raise MalformedAnswer(
                    f"CircleCI accepted the rerun of workflow {workflow_id} but did not say the new workflow's id",
                    where=f"POST {self.host}/api/v2{path}",
                    fix="find the new workflow in the CircleCI app; do not rerun again before checking",
                )
            return data["workflow_id"]
        raise AssertionError("unreachable")

    def _new_workflow(self, pipeline_id: str, name: str, seen: Collection[str], after: Any) -> str | None:
        """The newest workflow called *name* in the pipeline that is not in *seen* (and is newer than *after*)."""
        made = [
            w for w in self.workflows(pipeline_id)
            if w["name"] == name and w["id"] not in seen
            and not (isinstance(after, str) and isinstance(w.get("created_at"), str) and w["created_at"] < after)
        ]
        if not made:
            return None
        return max(made, key=lambda w: w.get("created_at") or "")["id"]

    def approve(self, workflow_id: str, job: Mapping[str, Any]) -> bool:
        """Approve a waiting approval job (``POST /workflow/{id}/approve/{approval_request_id}``).

        Args:
            workflow_id: the workflow's id.
            job: the approval job as :meth:`jobs` lists it (``name``, ``approval_request_id``).

        Returns True when this call approved it, False when it was approved already (CircleCI
        answered 400 and the job no longer waits). A POST of unknown outcome (5xx, timeout) is
        followed by a fresh read of the jobs before any second POST. Raises RunbookError on 404,
        on a 400 while the job still waits, and on every other failure.
        """
        request_id = str(job.get("approval_request_id"))
        path = f"/workflow/{quote(str(workflow_id), safe='')}/approve/{quote(request_id, safe='')}"
        for attempt in range(1, self.retries + 2):
            try:
                self._call(
                    "POST",
                    path,
                    ok=(200, 201, 202),
                    not_found=self._not_found("approval request", f"{request_id} in workflow {workflow_id}"),
                    refused=f"approve job {job.get('name')} of workflow {workflow_id}",
                )
                return True
            except OutcomeUnknown as exc:
                wait = backoff_seconds(attempt, self.backoff_factor, self.max_wait)
                self._say(f"{exc.what}; reading the job again in {wait:.1f} s before deciding whether to POST again")
                self._sleep(wait)
                status = self._approval_status(workflow_id, request_id)
                if status is not None and status != ON_HOLD:
                    return True
                if status is None or attempt > self.retries:
                    raise
            except RunbookError:
                if self._approval_status(workflow_id, request_id) == SUCCESS:  # canceled is not approved
                    return False
                raise
        raise AssertionError("unreachable")

    def _approval_status(self, workflow_id: str, request_id: str) -> str | None:
        found = [j for j in self.jobs(workflow_id) if j.get("approval_request_id") == request_id]
        return found[0]["status"] if found else None

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
        shown = f"/api/v1.1/project/{vcs}/{org}/{repo}/{int(job_number)}"
        check_shape(data, {"steps": [V1_STEP_SHAPE]}, f"GET {shown}", "the job", where=f"{self.host}{shown}",
                    fix="open the job in the CircleCI app to read its output")
        return data["steps"]

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
            raise RunbookError("The step's output_url is not an http(s) URL",
                               id="step-output-unavailable", fix="open the job in the CircleCI app")
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        response = self._send(self._plain, "GET", output_url, parts.path)
        if response.status_code in (401, 403):
            raise RunbookError(
                f"The output link of this step was refused ({response.status_code}); pre-signed links expire",
                id="step-output-unavailable",
                where=shown,
                fix="fetch the job's steps again for a fresh link, or open the job in the CircleCI app",
            )
        if response.status_code != 200:
            raise RunbookError(
                f"Fetching step output answered {response.status_code}",
                id="step-output-unavailable",
                where=shown,
                fix="open the job in the CircleCI app to read its output",
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if _shape_problem(data, [{"message?": str}], "the output") is not None:
            raise MalformedAnswer(
                "The step output is not a JSON array of {message, time, type}",
                where=shown,
                fix="open the job in the CircleCI app to read its output",
            )
        return data
