"""Applied records: what was last applied to a scope, one SSM parameter per scope holding compact JSON (format 3);
and the status of a commit against them (:func:`compare`, :func:`examine`), the one source of truth for "is an IAM
step needed".
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import runbook
from runbook import aws, git
from runbook.config import PROJECT_ROOT, Account, Environment
from runbook.errors import RunbookError, Transient
from runbook.scopes import Scope

FORMAT = 3
"""The record format this runbook writes; a record of a higher format was written by a newer runbook."""
MAX_VALUE_BYTES = 4096
"""Largest Standard tier parameter value, 4 KB
(https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html)."""
WRITE_ATTEMPTS = 6
"""PutParameter attempts when SSM answers TooManyUpdates (another writer at the same moment)."""
_FIELDS = ("fingerprint", "commit", "branch", "applied_by", "applied_at", "tool_version", "scope")


@dataclass(frozen=True)
class Record:
    """One applied record.

    Attributes:
        fingerprint: 64-character lowercase hex SHA-256 from ``Scope.fingerprint``.
        commit: full git commit SHA that was applied.
        branch: git branch it was applied from ("staging").
        applied_by: caller identity ARN (STS GetCallerIdentity ``Arn``) of the keys Terraform ran with.
        applied_at: UTC time of the apply, ISO-8601 with seconds and ``Z`` ("2026-06-01T12:00:00Z").
        tool_version: ``runbook.__version__`` of the tool that wrote the record.
        scope: ``"account"`` or the environment name ("stg").
        trees: path -> git tree id (or None) that the fingerprint covers; empty in records of format 2.
        inputs: SHA-256 of the resolved inputs ("" in records of format 2).
        outputs: the root module outputs later steps need (``{"lambda_role_names": [...]}``).
        format: the record format (:data:`FORMAT`; 2 for records without one).
    """

    fingerprint: str
    commit: str
    branch: str
    applied_by: str
    applied_at: str
    tool_version: str
    scope: str
    trees: dict[str, str | None] = field(default_factory=dict)
    inputs: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @classmethod
    def create(cls, *, fingerprint: str, commit: str, branch: str, applied_by: str, scope: str,
               trees: Mapping[str, str | None], inputs: str, outputs: Mapping[str, Any] | None = None,
               now: datetime | None = None) -> Record:
        """A record for an apply that just succeeded: ``applied_at`` is *now* (default: the current time) in
        UTC. Raises ValueError on a malformed field (see :meth:`from_dict`)."""
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return cls.from_dict({"fingerprint": fingerprint, "commit": commit, "branch": branch, "applied_by": applied_by,
                              "applied_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "format": FORMAT,
                              "tool_version": runbook.__version__, "scope": scope, "trees": dict(trees),
                              "inputs": inputs, "outputs": dict(outputs or {})})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Validate and build. Unknown keys are ignored. Raises ValueError naming the first malformed field,
        and :class:`NewerFormat` for a record of a format above :data:`FORMAT`."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("format", 2)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("field 'format' is not a whole number")
        if version > FORMAT:
            raise NewerFormat(version, str(data.get("tool_version", "?")))
        for name in _FIELDS:
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"field {name!r} is missing or not a non-empty string")
        if len(data["fingerprint"]) != 64 or not set(data["fingerprint"]) <= set(string.hexdigits.lower()):
            raise ValueError("field 'fingerprint' is not 64 lowercase hex characters")
        try:
            datetime.strptime(data["applied_at"], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise ValueError("field 'applied_at' is not UTC ISO-8601 like 2026-06-01T12:00:00Z") from None
        trees, outputs, inputs = data.get("trees", {}), data.get("outputs", {}), data.get("inputs", "")
        if not isinstance(trees, Mapping) or not all(isinstance(v, (str, type(None))) for v in trees.values()):
            raise ValueError("field 'trees' is not an object of tree ids")
        if not isinstance(outputs, Mapping) or not isinstance(inputs, str):
            raise ValueError("field 'outputs' is not an object, or 'inputs' not a string")
        return cls(**{name: data[name] for name in _FIELDS}, trees=dict(trees), inputs=inputs, outputs=dict(outputs),
                   format=version)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with every field."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact ASCII JSON with sorted keys: the exact parameter value written."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def size_problem(self) -> str | None:
        """Why this record cannot be written to a Standard parameter (its size), or None: checked before the
        apply, so that no apply can succeed and then fail to be recorded for its size."""
        size = len(self.to_json().encode())
        if size <= MAX_VALUE_BYTES:
            return None
        return (f"the applied record of {self.scope} would be {size} bytes of JSON; an SSM Standard parameter holds at "
                f"most {MAX_VALUE_BYTES}, and its outputs alone take {len(json.dumps(self.outputs))}")


class NewerFormat(ValueError):
    """A record of a format this runbook does not know: written by a newer runbook."""

    def __init__(self, version: int, tool: str):
        super().__init__(f"format {version}, written by runbook {tool!r}")  # repr: outside text, one safe line
        self.version, self.tool = version, tool


def read(client: Any, name: str, scope: str, account: aws.Account) -> dict[str, Any] | None:
    """The applied record in the SSM parameter *name* (a dict, as ``Record.to_dict``), or None if never applied.

    Args:
        client: an SSM client for *account* (:func:`runbook.aws.client`).
        name: the parameter (``Scope.parameter``).
        scope: ``"account"`` or an environment name: the record must name it.
        account: the configured account (for the commands a message suggests).

    One GetParameter call. Raises RunbookError as :func:`runbook.aws.failure` maps a failure;
    ``record-malformed`` when the value is not a valid record of this scope (naming the delete command and
    the apply that replaces it); ``record-newer`` when a newer runbook wrote it.
    """
    found = aws.call("reading the applied record", f"SSM parameter {name}", account,
                     lambda: client.get_parameter(Name=name), absent=("ParameterNotFound",),
                     permission=f"ssm:GetParameter on {name}")
    if found is None:
        return None
    try:
        record = Record.from_dict(json.loads(found["Parameter"]["Value"]))
        if record.scope != scope:
            raise ValueError(f"it names scope {record.scope!r}, not {scope!r}")
    except (KeyError, TypeError) as exc:
        raise RunbookError(f"AWS SSM answered GetParameter {name} without a value", id="not-an-aws-endpoint",
                           where=f"endpoint {account.endpoint_url or 'AWS default'}",
                           fix="check endpoint_url in the configuration points at an AWS API") from exc
    except NewerFormat as exc:
        raise RunbookError(f"The applied record in {name} was written by a newer runbook ({exc}); this one cannot read "
                           "it and will not overwrite it", id="record-newer", where=f"SSM parameter {name}",
                           fix="update this checkout's runbook (git pull --ff-only, then pip install -r "
                               "requirements.txt) and run the command again") from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than Python's stack
        raise RunbookError(f"The applied record for {scope} is malformed: {exc}", id="record-malformed",
                           where=f"SSM parameter {name}",
                           fix=aws.aws_command(account, "ssm", "delete-parameter", "--name", name) + " && "
                               + ("inv iam.account" if scope == "account" else f"inv iam.env --name {scope}")
                               + "  (deletes the unreadable record, then applies again, which writes a new one)"
                           ) from exc
    return record.to_dict()


def write(client: Any, name: str, record: Record, account: aws.Account) -> None:
    """Store *record* in the SSM parameter *name*, replacing any earlier one.

    One PutParameter (Type String, Tier Standard, Overwrite). TooManyUpdates (two releases finishing
    together) is tried again with tenacity after a jittered backoff (:data:`WRITE_ATTEMPTS` attempts, at most
    about 16 s of waiting). When the call fails in a way that may come after SSM applied it (a 5xx answer, a
    dropped connection or read timeout after sending), the parameter is read back once: if it holds exactly
    the value written, the record was written.

    Raises RunbookError when the record is too large (``record-too-large``), when the parameter has 100
    versions and the oldest is labelled (``record-version-limit``, with the unlabel command), when
    TooManyUpdates persists (``record-write-contended``), or as :func:`runbook.aws.failure` maps a failure.
    """
    import botocore.exceptions as errors
    import tenacity

    problem = record.size_problem()
    if problem:
        raise RunbookError(problem[0].upper() + problem[1:], id="record-too-large", where=name,
                           fix="record fewer or shorter root module outputs (only what the gate needs)")
    value = record.to_json()
    put = tenacity.Retrying(retry=tenacity.retry_if_exception(lambda e: aws.code_of(e) == "TooManyUpdates"),
                            wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
                            stop=tenacity.stop_after_attempt(WRITE_ATTEMPTS), reraise=True)
    try:
        put(client.put_parameter, Name=name, Value=value, Type="String", Tier="Standard", Overwrite=True,
            Description=f"runbook applied record: IAM {record.scope}")
    except aws.errors() as exc:
        code = aws.code_of(exc)
        if code == "TooManyUpdates":
            raise RunbookError(f"Another writer kept updating {name} at the same moment (TooManyUpdates, "
                               f"{WRITE_ATTEMPTS} attempts); the record was not written", id="record-write-contended",
                               where=f"SSM parameter {name}", fix="wait a minute") from exc
        if code == "ParameterMaxVersionLimitExceeded":
            raise _version_limit(client, name, account) from exc
        if (aws.status_of(exc) >= 500 or isinstance(exc, (errors.ConnectionClosedError, errors.ReadTimeoutError))) \
                and _holds(client, name, value):
            return  # SSM applied it; only its answer was lost
        raise aws.failure(exc, "writing the applied record", f"SSM parameter {name}", account,
                          permission=f"ssm:PutParameter on {name}") from exc


def _holds(client: Any, name: str, value: str) -> bool:
    try:
        return client.get_parameter(Name=name)["Parameter"]["Value"] == value
    except Exception:  # noqa: BLE001 - a failed check proves nothing: the write is reported as failed
        return False


def _version_limit(client: Any, name: str, account: aws.Account) -> RunbookError:
    """The error for ParameterMaxVersionLimitExceeded, with the unlabel command filled in from the parameter's
    history (GetParameterHistory, at most 5 pages of 50; when that read fails, how to list them). SSM keeps 100
    versions and cannot drop a labelled oldest one
    (https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-labels.html)."""
    try:
        pages = client.get_paginator("get_parameter_history").paginate(
            Name=name, PaginationConfig={"MaxItems": 250, "PageSize": 50})
        labelled = sorted((int(p["Version"]), [str(label) for label in p["Labels"]])
                          for page in pages for p in page.get("Parameters", []) if p.get("Labels"))
    except (*aws.errors(), KeyError, TypeError, ValueError):
        labelled = []
    what = (f"SSM refused a new version of {name}: the parameter already has 100 versions (the most SSM keeps) and "
            "its oldest version carries a label, so SSM may not delete it to make room "
            "(ParameterMaxVersionLimitExceeded). The record was not written; writing again fails the same way until "
            "the label is removed")
    commands = [aws.aws_command(account, "ssm", "unlabel-parameter-version", "--name", name, "--parameter-version",
                                str(version), "--labels", *labels)
                for version, labels in labelled or [("VERSION", ["LABEL"])]]
    if not labelled:
        listing = aws.aws_command(account, "ssm", "get-parameter-history", "--name", name,
                                  "--query", "Parameters[?Labels].[Version,Labels]")
        return RunbookError(what, id="record-version-limit", where=f"SSM parameter {name}",
                            fix=f"list the labelled versions: {listing}; remove the label of the oldest: {commands[0]}")
    more = (f" ({len(commands) - 1} newer labelled version(s) will block again once they are the oldest; remove their "
            "labels too if they are not needed: " + "; ".join(commands[1:]) + ")") if len(commands) > 1 else ""
    return RunbookError(f"{what}: version {labelled[0][0]} has the label(s) {', '.join(labelled[0][1])}",
                        id="record-version-limit", where=f"SSM parameter {name}", fix=f"{commands[0]}{more}")


CURRENT, PENDING, NEVER_APPLIED, UNKNOWN = "current", "pending", "never-applied", "unknown"


@dataclass(frozen=True)
class ScopeStatus:
    """One scope's status.

    Attributes:
        scope: the scope.
        state: "current", "pending" (change pending), "never-applied" or "unknown".
        fingerprint: this commit's fingerprint (64 hex characters).
        record: the applied record as a dict, or None.
        reason: for "unknown", why (for example no access); else "".
        changed: for "pending", what changed since the record: folders, and "inputs" (empty when the record
            is of an older format that names no folders).
    """

    scope: Scope
    state: str
    fingerprint: str
    record: dict | None = None
    reason: str = ""
    changed: tuple[str, ...] = ()

    @property
    def needed(self) -> bool:
        """Whether the administrator must apply this scope (anything but current)."""
        return self.state != CURRENT

    @property
    def text(self) -> str:
        """The state in words, for "pending" with what changed."""
        if self.state == PENDING:
            what = ", ".join("the configuration's inputs" if c == "inputs" else c for c in self.changed)
            return f"change pending ({what} changed)" if what else "change pending"
        return {CURRENT: "current", NEVER_APPLIED: "never applied", UNKNOWN: f"unknown: {self.reason}"}[self.state]


def compare(scope: Scope, trees: Mapping[str, str | None], record: dict | None) -> ScopeStatus:
    """*scope*'s status at the commit whose tree ids are *trees*, given its applied *record* (None: never applied)."""
    fingerprint = scope.fingerprint(trees)
    if record is None:
        return ScopeStatus(scope, NEVER_APPLIED, fingerprint)
    if record.get("fingerprint") == fingerprint:
        return ScopeStatus(scope, CURRENT, fingerprint, record)
    return ScopeStatus(scope, PENDING, fingerprint, record, changed=tuple(scope.changed(record, trees)))


def head_trees(scopes: Iterable[Scope]) -> dict[str, str | None]:
    """The tree ids of every path of *scopes* at HEAD (one ``git ls-tree`` in this repository)."""
    return git.trees("HEAD", [p for s in scopes for p in s.paths], PROJECT_ROOT)


def examine(scopes: Iterable[Scope], *, trees: Mapping[str, str | None] | None = None,
            session_for: Callable[[Account], Any] | None = None, use_profile: bool = True) -> list[ScopeStatus]:
    """The status of every scope, in the order given.

    Args:
        scopes: the scopes to examine.
        trees: the commit's tree ids (default: HEAD's, :func:`head_trees`).
        session_for: Account -> boto3 Session (default :func:`runbook.aws.session`, one per account).
        use_profile: passed to the default session factory (the pipeline ignores profiles).

    One STS GetCallerIdentity per account: the records of an account read with another account's credentials
    (every account names them alike) would pass for its own, so those scopes are "unknown". Then one SSM
    GetParameter per scope. A scope whose record cannot be read is "unknown" with the reason; once an
    account's SSM does not answer (:class:`~runbook.errors.Transient`), its remaining scopes are "unknown"
    without asking again, nor are those of other accounts at the same endpoint (or region), so an unresponsive
    endpoint costs one call's time-out, not one per scope or account. Raises only for a fingerprint that cannot
    be computed (a root module folder missing from the commit).
    """
    scopes = list(scopes)
    trees = head_trees(scopes) if trees is None else trees
    clients, gone, out = {}, {}, []
    for scope in scopes:
        account = scope.account
        ssm_at = account.endpoint_url or account.region  # accounts at one endpoint share its silence
        scope.fingerprint(trees)  # a missing root module is the caller's error, not a status
        try:
            if ssm_at in gone:
                raise Transient(gone[ssm_at])
            if account.name not in clients:  # once per account: its client, or why there is none
                try:
                    sess = session_for(account) if session_for else aws.session(account, use_profile=use_profile)
                    who = aws.caller_identity(sess, account)  # every account keeps its records under the same names
                    clients[account.name] = aws.client(sess, "ssm", account) if who.account_id == account.id else \
                        RunbookError(f"the credentials are for account {who.account_id}, not {account.id}",
                                     id="wrong-account")
                except RunbookError as exc:
                    clients[account.name] = exc
            if isinstance(clients[account.name], RunbookError):
                raise clients[account.name]
            out.append(compare(scope, trees, read(clients[account.name], scope.parameter, scope.name, account)))
        except RunbookError as exc:
            reason = exc.what.split(". ")[0].rstrip(".")
            if isinstance(exc, Transient) and ssm_at not in gone:
                gone[ssm_at] = f"not asked, the same SSM did not answer ({reason})"
            out.append(ScopeStatus(scope, UNKNOWN, scope.fingerprint(trees), reason=reason))
    return out


def commands(statuses: Iterable[ScopeStatus], via: Environment | None = None, *,
             branch: str | None = None) -> list[str]:
    """The commands that apply every scope that is pending or never applied, in order (account first).

    Args:
        statuses: from :func:`examine`.
        via: the environment whose branch applies an account scope (default: the environment of *branch* when
            it uses that account, else the account's first environment).
        branch: the branch checked out where the commands will be pasted, or None when unknown: a command that
            must run from another branch starts with ``git checkout BRANCH && git pull --ff-only &&``.

    Scopes in state "unknown" are left out: applying them is not known to be needed; their reason says what
    to fix. The commands of the branch checked out come first, so that the list can be pasted as a block: each
    later one checks out its own branch.
    """
    found = dict.fromkeys(st.scope.command(via, branch) for st in statuses if st.state in (PENDING, NEVER_APPLIED))
    return sorted(found, key=lambda command: command.startswith("git checkout "))
