"""The CircleCI adapter: CircleCI's API v2 (and API v1.1 for step output) behind the operations of
:class:`runbook.ci.Client`, answering with :mod:`runbook.ci`'s values; no other module sees CircleCI's JSON.
Facts: the API v2 reference (https://circleci.com/docs/api/v2/), the API developer's guide
(https://circleci.com/docs/api-developers-guide/), the v1.1 job details (https://circleci.com/docs/api/v1/).
The token goes only to the API host and is in no message and no exception chain. Nothing here prints."""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from jsonschema import Draft202012Validator
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from runbook import console
from runbook.ci import FAILED, SUCCESS, Job, Pages, Pipeline, StepOutputUnavailable, Workflow
from runbook.config import shown_path
from runbook.errors import RunbookError

DEFAULT_HOST = "https://circleci.com"
DEFAULT_APP_URL = "https://app.circleci.com"
TOKEN_VARIABLES = ("CIRCLECI_TOKEN", "CIRCLE_TOKEN", "CIRCLECI_CLI_TOKEN")
HOST_VARIABLES = ("CIRCLECI_HOST", "CIRCLECI_CLI_HOST")
TOKEN_PAGE = "CircleCI > User settings > Personal API Tokens (https://app.circleci.com/settings/user/tokens)"
SLUG_FIELD = "circleci.project_slug"
#: v1.1 ``vcs-type`` of each OAuth slug prefix; ``circleci/...`` slugs have no v1.1 API.
V1_VCS = {"gh": "github", "github": "github", "bb": "bitbucket", "bitbucket": "bitbucket"}

# The shapes of the answers (JSON Schema 2020-12, https://json-schema.org/draft/2020-12/json-schema-validation).
_STR, _INT, _TEXT, _NUMBER = ({"type": t} for t in ("string", "integer", ["string", "null"], ["integer", "null"]))


def _object(required: Mapping[str, Any], optional: Mapping[str, Any] | None = None) -> dict:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _page(item: dict) -> Draft202012Validator:
    return Draft202012Validator(_object({"items": {"type": "array", "items": item}}, {"next_page_token": _TEXT}))


_VCS = {"type": ["object", "null"], "properties": {"revision": _TEXT}}
_PIPELINES = _page(_object({"id": _STR, "number": _INT}, {"created_at": _TEXT, "state": _TEXT, "vcs": _VCS}))
_WORKFLOW = _object({"id": _STR, "name": _STR, "status": _STR, "pipeline_id": _STR, "pipeline_number": _INT},
                    {"created_at": _TEXT})
_WORKFLOWS, _ONE_WORKFLOW = _page(_WORKFLOW), Draft202012Validator(_WORKFLOW)
_JOBS = _page(_object({"name": _STR, "status": _STR}, dict.fromkeys(
    ("type", "approval_request_id", "started_at", "stopped_at"), _TEXT) | {"job_number": _NUMBER}))
_RERUN = Draft202012Validator(_object({"workflow_id": _STR}))
_ACTION = _object({}, {"status": _TEXT, "output_url": _TEXT, "exit_code": _NUMBER,
                       "failed": {"type": ["boolean", "null"]}})
_STEPS = Draft202012Validator(_object({"steps": {"type": "array", "items": _object({}, {
    "name": _TEXT, "actions": {"type": ["array", "null"], "items": _ACTION}})}}))
_OUTPUT = Draft202012Validator({"type": "array", "items": _object({}, {"message": _TEXT})})


class OutcomeUnknown(RunbookError):
    """A POST was sent but its answer says nothing certain (5xx, a read timeout, a dropped connection): CircleCI
    may or may not have acted. Never send it again blindly; look first (see :meth:`CircleCIClient.rerun`)."""

    default_id = "circleci-outcome-unknown"


class MalformedAnswer(RunbookError):
    """CircleCI answered 2xx with data of the wrong shape (a field missing, null, or of another type), or not JSON."""

    default_id = "circleci-malformed-answer"


def retry_policy(retries: int, backoff_factor: float, max_wait: float, notify: Callable[[str], None] | None = None
                 ) -> Retry:
    """urllib3's ``Retry`` for every request, *retries* at most: a GET is sent again after a connection error, a
    read timeout, 429 and 5xx; a POST (not in ``allowed_methods``) only after a connection error, certainly not
    sent, never after a read timeout or an answer (a POST answered 5xx may have been processed). The n-th wait is
    urllib3's backoff, ``backoff_factor * 2**(n-1)`` seconds plus up to ``backoff_factor`` of jitter (none before
    the first retry), or what ``Retry-After`` asks, *max_wait* seconds at most; *notify* hears of each first.
    https://urllib3.readthedocs.io/en/stable/reference/urllib3.util.html#urllib3.util.Retry"""

    class AnnouncedRetry(Retry):
        def sleep(self, response: Any = None) -> None:
            try:
                wait = (self.get_retry_after(response) if response is not None else None) or self.get_backoff_time()
            except InvalidHeader:  # "Retry-After: soon": the backoff applies, as without the header
                wait = self.get_backoff_time()
            last = self.history[-1]
            why = f"answered {last.status}" if last.status else f"failed ({type(last.error).__name__})"
            if notify is not None:
                notify(f"CircleCI {why} to {last.method} {urlsplit(last.url or '').path}; retrying in {wait:.1f} s")
            time.sleep(wait)

    return AnnouncedRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                          allowed_methods={"GET"}, status_forcelist={429, *range(500, 600)},
                          backoff_factor=backoff_factor, backoff_jitter=backoff_factor, backoff_max=max_wait,
                          retry_after_max=max_wait, raise_on_status=False)


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _token(env: Mapping[str, str]) -> tuple[str, str]:
    for name in TOKEN_VARIABLES:
        value = (env.get(name) or "").strip()
        if value and not (value.isascii() and value.isprintable() and " " not in value):
            raise RunbookError(f"The CircleCI token in {name} contains characters a token never has (spaces, line "
                               "breaks or non-ASCII): it was probably pasted with extra text",
                               id="circleci-setting-invalid", where=f"the environment variable {name}",
                               fix=f"export {name}=<the token exactly as CircleCI showed it>")
        if value:
            return value, name
    raise RunbookError("No CircleCI API token is set: none of " + ", ".join(TOKEN_VARIABLES) + " has a value",
                       id="circleci-no-token", where="the environment of this shell",
                       fix=f"create a personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>")


def _host(config_host: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    candidates = [*((env.get(name), name) for name in HOST_VARIABLES),
                  (config_host, f"{shown_path()} field circleci.host"), (DEFAULT_HOST, "the default")]
    value, source = next((v.strip(), s) for v, s in candidates if v and v.strip())
    host = value.rstrip("/") if "://" in value else "https://" + value.rstrip("/")
    parts = urlsplit(host)
    try:
        port = parts.port  # ValueError: not a number from 0 to 65535
    except ValueError:
        port = -1
    name = parts.hostname if parts.scheme in ("http", "https") and port != -1 and re.fullmatch(
        r"[\w.-]+", parts.hostname or "") else None
    base = f"{parts.scheme}://{name}" + (f":{port}" if port else "") if name else None
    extra = [what for what, there in (("a path", parts.path), ("a query", parts.query), ("a fragment", parts.fragment),
                                      ("user-info", "@" in parts.netloc)) if there]
    if base is None or extra:
        said = (f"has {' and '.join(extra)}: the runbook adds /api/v2/... itself" if base
                else "is not an http(s) URL with a host name (and a port from 1 to 65535)")
        url = shlex.quote(base or DEFAULT_HOST)
        fix = f"export {source}={url}" if source in HOST_VARIABLES else f"set it to {url}"
        raise RunbookError(f"The CircleCI host {console.mask(value)!r} {said}", id="circleci-setting-invalid",
                           where=source, fix=fix)
    return host, source


def _workflow(item: dict) -> Workflow:
    return Workflow(item["id"], item["name"], item["status"], item["pipeline_id"], item["pipeline_number"],
                    _when(item.get("created_at")))


def _job(item: dict) -> Job:
    return Job(item["name"], item["status"], item.get("type") or "build", item.get("job_number"),
               item.get("approval_request_id"), _when(item.get("started_at")), _when(item.get("stopped_at")))


class CircleCIClient:
    """The CircleCI adapter for one project; its operations are :class:`runbook.ci.Client`'s.

    Args:
        slug: the project slug as configured, opaque (``gh/org/repo``, ``circleci/<org-id>/<project-id>``).
        config_host: ``circleci.host`` of the configuration, or None (used when no host variable is set).
        env: where to read the token (:data:`TOKEN_VARIABLES`, the first set) and host variables (``os.environ``).
        connect_timeout, read_timeout: seconds to wait for a connection, and for the server between bytes.
        retries, backoff_factor (seconds), max_wait (seconds): see :func:`retry_policy`; a POST of unknown outcome
            is also sent at most ``retries`` times more, ``backoff_factor * 2**n`` seconds before the n-th look.
        notify: called with one line (no secrets) before each wait; None stays silent.

    Attributes: ``host`` and ``host_source`` (where it came from), ``token_source`` (the variable's name only).
    Raises RunbookError when no token is set, it is garbled, or the host is not http(s).
    """

    def __init__(self, slug: str, config_host: str | None = None, *, env: Mapping[str, str] | None = None,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, retries: int = 4,
                 backoff_factor: float = 0.5, max_wait: float = 60.0, notify: Callable[[str], None] | None = None):
        self.slug, self.notify = slug, notify or (lambda text: None)
        self._token, self.token_source = _token(os.environ if env is None else env)
        self.host, self.host_source = _host(config_host, os.environ if env is None else env)
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.retries, self.backoff_factor, self.max_wait = int(retries), float(backoff_factor), float(max_wait)
        retry = retry_policy(self.retries, self.backoff_factor, self.max_wait, lambda text: self.notify(text))
        self._api, self._plain = self._session(retry, self._token), self._session(retry, None)

    @staticmethod
    def _session(retry: Retry, token: str | None) -> requests.Session:
        session = requests.Session()
        for prefix in ("http://", "https://"):
            session.mount(prefix, HTTPAdapter(max_retries=retry))
        session.headers["Accept"] = "application/json"
        if token:
            session.headers["Circle-Token"] = token
        session.trust_env = bool(token)  # a pre-signed URL gets no ~/.netrc credentials either
        return session

    def web_url(self, pipeline_number: int, workflow_id: str = "") -> str:
        """The web app's page of a pipeline (``<app>/pipelines/<slug>/<number>``) or of one of its workflows
        (``.../workflows/<id>``): https://app.circleci.com for https://circleci.com, else the host itself (a
        CircleCI server installation serves its app there)."""
        app = DEFAULT_APP_URL if self.host == DEFAULT_HOST else self.host
        return f"{app}/pipelines/{self.slug}/{int(pipeline_number)}" + (f"/workflows/{workflow_id}" if workflow_id
                                                                        else "")

    def _request(self, session: requests.Session, method: str, url: str, shown: str, **kw: Any) -> requests.Response:
        """Send one request (with its retries); a transport failure becomes RunbookError naming *shown*."""
        try:
            return session.request(method, url, timeout=self.timeout, allow_redirects=session is self._plain, **kw)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            error = self._transport_error(exc, method, urlsplit(url).netloc, shown)
        raise error from None  # the cause holds the request, and the request holds the token

    def _transport_error(self, exc: Exception, method: str, netloc: str, shown: str) -> RunbookError:
        cause = exc.args[0] if exc.args else exc
        cause = getattr(cause, "reason", None) or cause  # MaxRetryError: what failed the last attempt
        if isinstance(cause, ConnectTimeoutError):  # or its subclass NewConnectionError: nothing was sent
            why = "connection refused or host unknown" if isinstance(cause, NewConnectionError) else \
                f"no connection within {self.timeout[0]:g} s"
            return RunbookError(
                f"Could not connect to CircleCI at {netloc} ({why}) (after {self.retries + 1} attempt(s))",
                id="circleci-unreachable", where=f"{self.host} (from {self.host_source}; CIRCLECI_HOST overrides the "
                "others)", fix="check the network" + (f" and the address in {self.host_source}" if self.host_source !=
                                                      "the default" else "") + "; unset CIRCLECI_HOST and "
                "CIRCLECI_CLI_HOST to use the configuration or https://circleci.com")
        return self._no_answer(method, f"{netloc} " + (
            f"did not answer {method} {shown} within {self.timeout[1]:g} s" if isinstance(cause, ReadTimeoutError)
            else f"dropped the connection during {method} {shown}" if isinstance(cause, ProtocolError)
            else f"failed {method} {shown}: {type(cause).__name__}: {self._scrub(str(cause))[:200]}"))

    def _no_answer(self, method: str, what: str) -> RunbookError:
        """A request without a certain answer: for a POST an OutcomeUnknown, for a GET retried in vain."""
        unknown = OutcomeUnknown if method == "POST" else RunbookError
        return unknown(f"CircleCI at {what}" + (" (CircleCI may have acted)" if method == "POST" else
                                               f" (after {self.retries + 1} attempt(s))"),
                       id="circleci-outcome-unknown" if method == "POST" else "circleci-unreachable",
                       where=f"{self.host} (from {self.host_source})",
                       fix="check the network and https://status.circleci.com, then run the command again")

    def _scrub(self, text: str) -> str:
        # the one masker, with this client's token; one shorter than any real token would mangle words, not hide one
        return console.mask(text, (self._token,) if len(self._token) >= console.MIN_SECRET_LEN else ())

    def _call(self, method: str, path: str, *, api: str = "/api/v2", params: Mapping[str, str] | None = None,
              body: Mapping[str, Any] | None = None, on: Mapping[int, Callable[[], RunbookError]] | None = None,
              refused: str = "", shape: Draft202012Validator | None = None) -> Any:
        """One API call (*path* below *api*, quoted): send, decode, check against *shape*; any answer but 2xx is a
        RunbookError: *on* maps a status to a function making its error (what a 404 means depends on the call),
        *refused* says what a 400 refused ("rerun workflow X"). A POST answered 5xx or not at all: OutcomeUnknown."""
        shown = api + path
        response = self._request(self._api, method, self.host + shown, shown, params=params, json=body)
        status, where = response.status_code, f"{method} {self.host}{shown}"
        if 200 <= status < 300:
            return self._decode(response, f"{method} {shown}", shape)
        if on and status in on:
            raise on[status]()
        try:
            message = str(response.json().get("message") or "")
        except (ValueError, AttributeError, RecursionError):
            message = response.text.strip()[:200]
        message = console.one_line(self._scrub(message)) or response.reason or "no message"  # outside text
        if status in (401, 403):
            raise RunbookError(f"CircleCI refused the API token from {self.token_source} for {method} {shown} "
                               f"({status}: {message})", id="circleci-token-rejected", where=where,
                               fix=f"create a personal API token at {TOKEN_PAGE} (as a user with write access to the "
                               "project), then: export CIRCLECI_TOKEN=<token>")
        if status == 429:
            wait = response.headers.get("Retry-After", "").strip()
            wait = wait if wait.isdigit() else "60"
            raise RunbookError(f"CircleCI is throttling requests from this token (429); try again in {wait} s",
                               id="circleci-throttled", where=where,
                               fix=f"wait {wait} s and run the command again; avoid polling in parallel")
        if status >= 500:
            raise self._no_answer(method, f"{urlsplit(self.host).netloc} answered {status} to {method} {shown}: "
                                  f"{message}")
        raise RunbookError(
            f"CircleCI refused to {refused} (400: {message})" if status == 400 and refused
            else f"CircleCI answered {status} to {method} {shown}: {message}", id="circleci-error", where=where,
            fix="open the workflow in the CircleCI app to see its state, then run the command again" if refused
            else "check the arguments of the command; the CircleCI API v2 reference lists this endpoint")

    def _decode(self, response: requests.Response, shown: str, shape: Draft202012Validator | None) -> Any:
        try:
            data = response.json()
            error = next(shape.iter_errors(data), None) if shape is not None else None
            problem = error and f"{error.message[:160]} (at {error.json_path})"  # what jsonschema says, and where
        except (ValueError, RecursionError):  # not chained: the body may echo the request, its token header too
            problem = f"the body is not JSON (Content-Type {response.headers.get('Content-Type', 'none')!r})"
        if problem:
            raise MalformedAnswer(
                f"CircleCI answered {shown} with data of the wrong shape: {problem}",
                where=f"{self.host} (from {self.host_source})",
                fix="CircleCI may have acted: `inv ci.status` shows whether a new workflow started; do not run the "
                "command again before checking" if shown.startswith("POST") else "check that CIRCLECI_HOST points at "
                "the CircleCI API v2 (https://circleci.com/docs/api/v2/); if it does, run the command again later "
                "and check https://status.circleci.com")
        return data

    def _paged(self, path: str, params: Mapping[str, str] | None, max_pages: int,
               not_found: Callable[[], RunbookError], shape: Draft202012Validator, pages: Pages | None = None
               ) -> Iterator[dict]:
        """The ``items`` of a paged list, following ``next_page_token`` for up to *max_pages* pages. A 400 or 404 on
        a later page is its page token's failure, never *not_found*. *pages* learns how far it read."""
        query, pages = dict(params or {}), pages or Pages()
        for page in range(1, max_pages + 1):
            paging = functools.partial(self._paging_failed, f"/api/v2{path}", page)
            data = self._call("GET", path, params=query, shape=shape,
                              on={404: not_found} if page == 1 else {400: paging, 404: paging})
            pages.read = page
            yield from data["items"]
            pages.more = bool(data.get("next_page_token")) and page == max_pages
            if not data.get("next_page_token"):
                return
            query["page-token"] = data["next_page_token"]

    def _paging_failed(self, shown: str, page: int) -> RunbookError:
        return RunbookError(
            f"CircleCI refused page {page} of GET {shown} (its page-token, from page {page - 1}): a paging failure; "
            "the first page was read, so the project and the token are fine", id="circleci-paging",
            where=f"{self.host}{shown}",
            fix="run the command again (page tokens are short-lived); if it persists check https://status.circleci.com")

    def _not_found(self, what: str, ident: str) -> Callable[[], RunbookError]:
        return lambda: RunbookError(
            f"CircleCI has no {what} {ident}, or the token from {self.token_source} cannot see it (404)",
            id="circleci-not-found", where=self.host, fix="check the id (copy it from the CircleCI app)")

    def _project_not_found(self) -> RunbookError:
        """The error for a 404 on the project: one ``GET /me`` tells a wrong slug from a token that is not personal."""
        try:
            me = self._request(self._api, "GET", self.host + "/api/v2/me", "/api/v2/me")
            status, login = me.status_code, me.json().get("login") if me.status_code == 200 else None
        except (RunbookError, ValueError, AttributeError):
            status, login = None, None
        slug_fix = (f"correct {SLUG_FIELD}: copy the slug from Project Settings in the CircleCI app. OAuth projects "
                    "are gh/<org>/<repo> or bb/<org>/<repo>; GitHub App and GitLab projects are "
                    "circleci/<org-id>/<project-id> (the IDs are in Organization Settings and Project Settings)")
        token_fix = f"create a personal API token at {TOKEN_PAGE}, then: export CIRCLECI_TOKEN=<token>"
        if status in (401, 403, 404):
            return RunbookError(
                f"CircleCI answered 404 for project {self.slug}, and GET /me answered {status} to the token from "
                f"{self.token_source}: it is not a personal API token. API v2 needs a personal token; a project API "
                "token gets 404", id="circleci-not-found", where=f"the environment variable {self.token_source}",
                fix=token_fix)
        who = f"user {login}" if isinstance(login, str) and re.fullmatch(r"[\w.@-]{1,64}", login) else "its user"
        return RunbookError(
            f"CircleCI project {self.slug} was not found (404 Project not found). " + (
                f"The token from {self.token_source} is a valid personal token (GET /me answered for {who}), so the "
                "slug is wrong or that user cannot see the project" if status == 200 else f"The slug is wrong, or "
                f"the API token from {self.token_source} cannot see it (API v2 needs a personal token)"),
            id="circleci-not-found", where=f"{shown_path()} field {SLUG_FIELD}; host {self.host}",
            fix=f"{slug_fix}; or " + ("use a token of a user who can see the project" if status == 200 else token_fix))

    def pipelines(self, branch: str | None = None, *, max_pages: int = 1, pages: Pages | None = None
                  ) -> Iterator[Pipeline]:
        """The project's pipelines, newest first (``GET /project/{slug}/pipeline?branch=B``; *branch* goes in the
        query: ``feature/x`` as ``feature%2Fx``), a page (a request) read as iteration reaches it, *max_pages* at
        most, *pages* told how many and whether more exist. Errors are raised while iterating; a 404 says whether
        the token or the slug is wrong (after one ``GET /me``)."""
        path = f"/project/{quote(self.slug, safe='/')}/pipeline"  # opaque: its slashes stay as they are
        for item in self._paged(path, {"branch": branch} if branch else None, max_pages, self._project_not_found,
                                _PIPELINES, pages):
            revision = (item.get("vcs") or {}).get("revision") or ""
            yield Pipeline(item["id"], item["number"], revision, _when(item.get("created_at")), item.get("state") or "")

    def workflows(self, pipeline_id: str) -> list[Workflow]:
        """The workflows of a pipeline (``GET /pipeline/{id}/workflow``, up to 10 pages); none while it is set up."""
        return [_workflow(w) for w in self._paged(f"/pipeline/{quote(pipeline_id, safe='')}/workflow", None, 10,
                                                  self._not_found("pipeline", pipeline_id), _WORKFLOWS)]

    def workflow(self, workflow_id: str) -> Workflow:
        """One workflow as it is now (``GET /workflow/{id}``)."""
        return _workflow(self._call("GET", f"/workflow/{quote(workflow_id, safe='')}", shape=_ONE_WORKFLOW,
                                    on={404: self._not_found("workflow", workflow_id)}))

    def jobs(self, workflow_id: str) -> list[Job]:
        """The jobs of a workflow (``GET /workflow/{id}/job``, up to 10 pages)."""
        return [_job(j) for j in self._paged(f"/workflow/{quote(workflow_id, safe='')}/job", None, 10,
                                             self._not_found("workflow", workflow_id), _JOBS)]

    def rerun(self, workflow: Workflow, *, from_failed: bool = True, known: Collection[str] = ()) -> str:
        """Rerun *workflow* (``POST /workflow/{id}/rerun``); the new workflow's id.

        *from_failed*: body ``{"from_failed": true}``: the failed jobs and those after them run again, the others
        keep their results; False: ``{}``, the whole workflow from the start. *known*: ids of workflows its
        pipeline had before, never taken for the new one. After a POST of unknown outcome this waits, lists the
        pipeline's workflows and returns the new one if CircleCI made it; only when there is none does it POST again
        (at most ``retries`` times): one call never makes two reruns. Raises RunbookError with CircleCI's message on
        400 (e.g. rerun 100 times already), and OutcomeUnknown when no attempt made a workflow.
        """
        path = f"/workflow/{quote(workflow.id, safe='')}/rerun"
        how, seen = "from failed" if from_failed else "from the start", {*known, workflow.id}
        for attempt in itertools.count(1):
            try:
                return self._call("POST", path, body={"from_failed": True} if from_failed else {}, shape=_RERUN,
                                  on={404: self._not_found("workflow", workflow.id)},
                                  refused=f"rerun workflow {workflow.id} {how}")["workflow_id"]
            except OutcomeUnknown as exc:
                self._wait_after(exc, attempt, "looking for the new workflow")
                made = [w for w in self.workflows(workflow.pipeline_id) if w.name == workflow.name and w.id not in seen
                        and not (w.created_at and workflow.created_at and w.created_at < workflow.created_at)]
                if made:
                    new = max(made, key=lambda w: w.created_at.timestamp() if w.created_at else 0.0).id
                    self.notify(f"CircleCI had made the rerun (workflow {new}); not POSTing again")
                    return new
                if attempt > self.retries:
                    raise OutcomeUnknown(f"{exc.what}; after {attempt} attempt(s) pipeline #{workflow.pipeline_number} "
                                         f"has no new workflow {workflow.name}: nothing was rerun", where=exc.where,
                                         fix="check https://status.circleci.com, then run the command again") from exc
                self.notify(f"pipeline #{workflow.pipeline_number} has no new workflow {workflow.name}: POSTing the "
                            "rerun again")

    def approve(self, workflow_id: str, job: Job) -> bool:
        """Approve a waiting approval job (``POST /workflow/{id}/approve/{approval_request_id}``).

        Returns True when this call approved it, False when it was approved already (CircleCI answered 400 and the
        job's status is ``success``). After a POST of unknown outcome the job is read again: approved is True,
        anything else raises the OutcomeUnknown (the command is safe to run again: it reads the job first). Raises
        RunbookError on 404, on a 400 for a job not approved, and on every other failure.
        """
        path = f"/workflow/{quote(workflow_id, safe='')}/approve/{quote(job.approval_request_id or '', safe='')}"
        approved = lambda: SUCCESS == next(  # noqa: E731
            (j.status for j in self.jobs(workflow_id) if j.approval_request_id == job.approval_request_id), None)
        try:
            self._call("POST", path, refused=f"approve job {job.name} of workflow {workflow_id}",
                       on={404: self._not_found("approval request", f"of job {job.name} in {workflow_id}")})
        except OutcomeUnknown as exc:
            self._wait_after(exc, 1, "reading the job again")
            if not approved():
                raise
        except RunbookError as exc:  # a 400 for a job approved meanwhile: "already approved"
            if exc.id != "circleci-error" or not approved():
                raise
            return False
        return True

    def _wait_after(self, exc: OutcomeUnknown, attempt: int, then: str) -> None:
        wait = min(self.max_wait, self.backoff_factor * 2 ** attempt)
        self.notify(f"{exc.what}; {then} in {wait:.1f} s before deciding whether to POST again")
        time.sleep(wait)

    def step_output(self, job: Job) -> Iterator[tuple[str, str]]:
        """(step name, its output) of each failed step of *job*: the steps from API v1.1
        (``GET /api/v1.1/project/{vcs}/{org}/{repo}/{job_number}``), each output as iteration reaches it, from its
        pre-signed ``output_url`` WITHOUT the token. Raises StepOutputUnavailable for a job not started, for slugs
        but ``gh/``, ``github/``, ``bb/``, ``bitbucket/`` (v1.1 does not serve GitHub App, GitLab or Bitbucket Data
        Center projects) and for an output link refused (pre-signed links expire); RunbookError otherwise."""
        parts = self.slug.split("/")
        if job.job_number is None or parts[0] not in V1_VCS:
            raise StepOutputUnavailable(
                f"Step output is not available for job {job.name}: it has not started" if job.job_number is None
                else f"Step output is not available for project {self.slug}: API v1.1 only serves GitHub OAuth "
                "and Bitbucket Cloud projects (gh/..., bb/...)",
                where=f"{shown_path()} field {SLUG_FIELD}", fix="open the job in the CircleCI app to read its output")
        path = f"/project/{V1_VCS[parts[0]]}/{quote(parts[1], safe='')}/{quote(parts[2], safe='')}/{job.job_number}"
        data = self._call("GET", path, api="/api/v1.1", on={404: self._project_not_found}, shape=_STEPS)
        for step in data["steps"]:
            for action in step.get("actions") or []:
                if action.get("failed") or action.get("status") == FAILED or action.get("exit_code") not in (None, 0):
                    yield step.get("name") or "", "\n".join(m.get("message") or ""
                                                            for m in self._output(action.get("output_url") or ""))

    def _output(self, url: str) -> list[dict]:
        """One action's output, ``[{"message", "time", "type"}]``, from its pre-signed URL, without the token."""
        if not url:
            return []
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"  # without the query: it holds the signature
        response = self._request(self._plain, "GET", url, parts.path) if parts.scheme in ("http", "https") else None
        if response is None or response.status_code != 200:
            status = "not http(s)" if response is None else response.status_code
            raise StepOutputUnavailable(
                f"The output link of this step was refused ({status}); pre-signed links expire" if status in (401, 403)
                else f"Fetching step output failed ({status})", where=shown,
                fix="run the command again for a fresh link, or open the job in the CircleCI app")
        return self._decode(response, f"GET {shown}", _OUTPUT)
