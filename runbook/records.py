"""Applied records: what was last applied to a scope, kept in SSM Parameter Store.

After every successful apply of an IAM root module the runbook writes one
record into Parameter Store of the same AWS account:

- ``/<project>/iam/account`` for the account root module;
- ``/<project>/iam/env/<name>`` for an environment root module.

The value is compact JSON with sorted keys, for example (wrapped here)::

    {"applied_at":"2024-06-01T12:00:00Z",
     "applied_by":"arn:aws:sts::123456789012:assumed-role/Admin/alice",
     "branch":"staging","commit":"1a2b3c4d...","fingerprint":"<64 hex>",
     "outputs":{"lambda_role_names":["acme-api-stg-lambda"]},"scope":"stg",
     "tool_version":"0.1.0"}

Anyone with ``ssm:GetParameter`` on that name (an administrator's laptop, the
CI gate) can then compare it with the fingerprint of the commit at hand.

Limits, from the AWS Systems Manager API reference (PutParameter, GetParameter)
and the Parameter Store user guide ("Managing parameter tiers"): a Standard tier
parameter value holds at most 4 KB (4096 characters)
(https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html);
the rules for names are in :func:`runbook.names.ssm_parameter`, which the configuration check
applies too. SSM keeps 100 versions of a parameter and cannot drop a labelled oldest one (see
:func:`write`). Standard parameters carry no extra charge.

boto3 and botocore are imported inside the functions that use them, so
``import runbook.records`` stays cheap; every function takes the boto3 Session
(or an SSM client) of the account that holds the record.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import string
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import runbook
from runbook.aws import CREDENTIAL_CODES, DENIED_CODES, THROTTLING_CODES
from runbook.errors import RunbookError

ACCOUNT = "account"
"""The scope name of the account root module; every other scope is an environment name."""

CURRENT = "current"
PENDING = "pending"
NEVER_APPLIED = "never-applied"

MAX_VALUE_BYTES = 4096
"""Largest Standard tier parameter value (AWS SSM PutParameter: 4 KB)."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FIELDS = ("fingerprint", "commit", "branch", "applied_by", "applied_at", "tool_version", "scope")


@dataclass(frozen=True)
class Record:
    """One applied record.

    Attributes:
        fingerprint: 64-character lowercase hex SHA-256 from ``fingerprint.compute``.
        commit: full git commit SHA that was applied.
        branch: git branch it was applied from ("staging").
        applied_by: caller identity ARN (STS GetCallerIdentity ``Arn``) of whoever applied.
        applied_at: UTC time of the apply, ISO-8601 with seconds and ``Z`` ("2024-06-01T12:00:00Z").
        tool_version: ``runbook.__version__`` of the tool that wrote the record.
        scope: ``"account"`` or the environment name ("stg").
        outputs: the root module outputs later steps need, JSON-serialisable; the environment
            root records ``{"lambda_role_names": [...]}``.
    """

    fingerprint: str
    commit: str
    branch: str
    applied_by: str
    applied_at: str
    tool_version: str
    scope: str
    outputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, fingerprint: str, commit: str, branch: str, applied_by: str, scope: str,
               outputs: Mapping[str, Any] | None = None, now: datetime | None = None) -> Record:
        """A record for an apply that just succeeded: ``applied_at`` is *now* (default: the
        current time) in UTC, ``tool_version`` is this package's version. Raises ValueError on a
        malformed field (see :meth:`from_dict`)."""
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return cls.from_dict({
            "fingerprint": fingerprint, "commit": commit, "branch": branch, "applied_by": applied_by,
            "applied_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "tool_version": runbook.__version__,
            "scope": scope, "outputs": dict(outputs or {}),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Validate and build. Unknown keys are ignored (a newer tool may add fields).

        Raises ValueError naming the first missing or malformed field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        for name in _FIELDS:
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"field {name!r} is missing or not a non-empty string")
        fingerprint = data["fingerprint"]
        if len(fingerprint) != 64 or not set(fingerprint) <= set(string.hexdigits.lower()):
            raise ValueError("field 'fingerprint' is not 64 lowercase hex characters")
        try:
            datetime.strptime(data["applied_at"], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise ValueError("field 'applied_at' is not UTC ISO-8601 like 2024-06-01T12:00:00Z") from None
        outputs = data.get("outputs", {})
        if not isinstance(outputs, Mapping):
            raise ValueError("field 'outputs' is not an object")
        return cls(**{name: data[name] for name in _FIELDS}, outputs=dict(outputs))

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Parse the parameter value. Raises ValueError when it is not JSON or not a valid record."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg} at character {error.pos})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with every field (``outputs`` copied)."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact ASCII JSON with sorted keys: the exact parameter value written."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)




class Transient(RunbookError):
    """SSM did not answer usefully for a reason that may pass (throttling, a dropped connection, a
    timeout); pollers back off and try again."""

    default_id = "aws-unreachable"


class Throttled(Transient):
    """SSM kept throttling after botocore's retries."""


def parameter_name(project: str, scope: str, env: str | None = None) -> str:
    """The SSM parameter that holds *scope*'s record.

    Args:
        project: the ``project`` short name from the configuration ("acme-api").
        scope: ``"account"``, or an environment name ("stg"). The forms ``scope="env", env="stg"``
            and ``scope="environment", env="stg"`` (as in ``Config.backend``) are accepted too.
        env: environment name when *scope* is ``"env"`` or ``"environment"``.

    Returns ``/<project>/iam/account`` or ``/<project>/iam/env/<name>``.

    Raises RunbookError, naming the configuration field, when the name breaks a rule of SSM
    (:func:`name_problem`; the configuration check applies the same function, so a
    configuration that passed ``inv config.check`` never gets here).
    """
    if env is not None:
        if scope not in ("env", "environment"):
            raise ValueError(f"env={env!r} given with scope={scope!r}; use scope='env' or scope={env!r}")
        scope = env
    problem = name_problem(project, scope)
    if problem:
        field, text = problem
        shown = _config_file()
        raise RunbookError(text, id="config-invalid", where=f"{shown}, field {field}",
                           fix=f"edit {field} in {shown}, then run inv config.check")
    return f"/{project}/iam/account" if scope == ACCOUNT else f"/{project}/iam/env/{scope}"


def name_problem(project: str, scope: str) -> tuple[str, str] | None:
    """Why *project* and *scope* cannot make the record's parameter name, or None.

    Returns (configuration field, sentence): the field is ``"project"`` or ``"environments.<scope>"``.
    Each level must be letters, digits and ``_.-``; the whole name must pass
    :func:`runbook.names.ssm_parameter` (no ``aws``/``ssm`` prefix, at most 1011 characters;
    https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-create.html).
    """
    from runbook import names

    if not _NAME.match(project or ""):
        return "project", (f"The project name {project!r} cannot be used in an SSM parameter name: use letters, "
                           "digits and _.- only")
    problem = names.ssm_parameter(f"/{project}/iam/account")
    if problem:
        return "project", f"The project name {project!r} cannot be used in the applied record's name: {problem}"
    if scope == ACCOUNT:
        return None
    field = f"environments.{scope}"
    if not _NAME.match(scope or ""):
        return field, (f"The environment name {scope!r} cannot be used in an SSM parameter name: use letters, "
                       "digits and _.- only")
    problem = names.ssm_parameter(f"/{project}/iam/env/{scope}")
    return (field, f"The environment name {scope!r} cannot be used in the applied record's name: {problem}") \
        if problem else None


def _config_file() -> str:
    """The configuration file in use, for messages (``RUNBOOK_CONFIG`` when set)."""
    from runbook.config import shown_path

    return shown_path()


def rewrite_command(scope: str) -> str:
    """The command that applies *scope* again and so rewrites its record."""
    return "inv iam.account" if scope == ACCOUNT else f"inv iam.env --name {scope}"


def write(client: Any, project: str, scope: str, record: Record | Mapping[str, Any],
          endpoint_url: str | None = None, profile: str | None = None) -> str:
    """Store *record* as *scope*'s applied record, replacing any earlier one.

    Args:
        client: an SSM client for the account the scope lives in, from :func:`runbook.aws.client`
            (the one client factory: region, endpoint, standard retries with backoff).
        project: the ``project`` short name from config/environments.yml.
        scope: ``"account"`` or an environment name; must equal ``record.scope``.
        record: a :class:`Record`, or a dict with the same fields.
        endpoint_url: a local AWS endpoint, or None.
        profile: the AWS profile in use, or None; only for the commands a message suggests.

    One PutParameter call: Type String, Tier Standard, Overwrite True. When SSM answers
    TooManyUpdates (two releases finishing together) it is tried again after a jittered backoff,
    :data:`WRITE_ATTEMPTS` attempts in all (at most about 16 seconds of waiting). When the call fails
    in a way that may come after SSM applied it (the connection closed or the read timed out before the
    answer, or a 5xx answer), the parameter is read back once (GetParameter): if it holds exactly the
    value written, the record was written. Returns the parameter name written.

    Raises RunbookError when the record is malformed, belongs to another scope or its JSON is
    longer than 4096 bytes (the Standard tier limit), when the caller lacks ``ssm:PutParameter``,
    when credentials are missing or expired, when the parameter has 100 versions and the oldest
    is labelled (the message holds the ``aws ssm unlabel-parameter-version`` command, values
    filled in), when TooManyUpdates persists, or on any other AWS error (named by its code).
    """
    name = parameter_name(project, scope)
    if not isinstance(record, Record):
        try:
            record = Record.from_dict(record)
        except ValueError as error:
            raise RunbookError(f"Refusing to write a malformed applied record to {name}: {error}",
                               id="record-malformed") from None
    if record.scope != scope:
        raise RunbookError(
            f"Refusing to write a record for scope {record.scope!r} to {name} (scope {scope!r})",
            id="record-malformed",
            where=name,
        )
    value = record.to_json()
    size = len(value.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise RunbookError(
            f"The applied record for {scope} is {size} bytes of JSON; an SSM Standard parameter holds at most"
            f" {MAX_VALUE_BYTES}, and its outputs alone take {len(json.dumps(record.outputs))}",
            id="record-too-large",
            where=name,
            fix="record fewer or shorter root module outputs (only what the gate needs), then "
            + rewrite_command(scope),
        )
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            _call(client.put_parameter, name, scope, "ssm:PutParameter", endpoint_url,
                  Name=name, Value=value, Type="String", Tier="Standard", Overwrite=True,
                  Description=f"runbook applied record: IAM {scope}")
            return name
        except _Contended:
            if attempt == WRITE_ATTEMPTS:
                raise RunbookError(
                    f"Another writer kept updating {name} at the same moment (TooManyUpdates, {WRITE_ATTEMPTS} "
                    "attempts); the record was not written",
                    id="record-write-contended",
                    where=f"SSM parameter {name}",
                    fix=f"wait a minute, then {rewrite_command(scope)}",
                ) from None
            _sleep(random.uniform(0, min(WRITE_BACKOFF_CAP_S, WRITE_BACKOFF_BASE_S * 2 ** (attempt - 1))))
        except _VersionLimit:
            raise _version_limit_error(client, name, scope, endpoint_url, profile) from None
        except RunbookError as exc:
            if _may_have_landed(exc) and _holds(client, name, value):
                return name  # SSM applied it; only its answer was lost
            raise
    raise AssertionError("unreachable")


def _may_have_landed(exc: RunbookError) -> bool:
    """Whether the failure behind *exc* (its ``__context__``, the botocore exception) can come after SSM applied
    the request: the connection closed or the read timed out after the request was sent, or a 5xx answer
    (https://docs.aws.amazon.com/general/latest/gr/api-retries.html). A refused or timed-out connection and
    throttling never reached it."""
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

    cause = exc.__context__
    if isinstance(cause, ClientError):
        return (cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) >= 500
    return isinstance(cause, (ConnectionClosedError, ReadTimeoutError))


def _holds(client: Any, name: str, value: str) -> bool:
    """Whether the parameter *name* holds exactly *value* now (one GetParameter; any failure: False)."""
    try:
        return client.get_parameter(Name=name)["Parameter"]["Value"] == value
    except Exception:  # noqa: BLE001 - a failed check proves nothing: the write is reported as failed
        return False


WRITE_ATTEMPTS = 6
"""PutParameter attempts when SSM answers TooManyUpdates (another writer at the same moment)."""
WRITE_BACKOFF_BASE_S = 0.5
WRITE_BACKOFF_CAP_S = 8.0
"""Backoff before attempt n+1 after TooManyUpdates: a random 0 to min(8, 0.5 * 2**n) seconds ("full jitter",
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/); at most 0.5+1+2+4+8 = 15.5 s in all."""

_sleep = time.sleep


class _Contended(RunbookError):
    """SSM answered TooManyUpdates: another PutParameter on the same name at the same moment."""

    default_id = "record-write-contended"


class _VersionLimit(RunbookError):
    """SSM answered ParameterMaxVersionLimitExceeded (see :func:`_version_limit_error`)."""

    default_id = "record-version-limit"


def _version_limit_error(client: Any, name: str, scope: str, endpoint_url: str | None,
                         profile: str | None) -> RunbookError:
    """The error for ParameterMaxVersionLimitExceeded, with the unlabel command filled in.

    SSM keeps the last 100 versions of a parameter and deletes the oldest to make room for a new
    one, unless the oldest carries a label: then PutParameter fails and keeps failing until the
    label is removed or moved (Parameter Store user guide, "Working with parameter labels",
    https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-labels.html).
    Reads the parameter's history (GetParameterHistory, at most 5 pages of 50) to name the
    labelled versions; when that read fails, the message says how to list them.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    tail = _cli_options(client, endpoint_url, profile)
    labelled: list[tuple[int, list[str]]] = []
    try:
        kwargs: dict[str, Any] = {"Name": name, "MaxResults": 50}
        for _ in range(5):
            page = client.get_parameter_history(**kwargs)
            labelled += [(int(p["Version"]), [str(label) for label in p.get("Labels") or []])
                         for p in page.get("Parameters", []) if p.get("Labels")]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    except (BotoCoreError, ClientError, KeyError, TypeError, ValueError):
        labelled = []
    labelled.sort()
    what = (f"SSM refused a new version of {name}: the parameter already has 100 versions (the most SSM keeps) "
            "and its oldest version carries a label, so SSM may not delete it to make room "
            "(ParameterMaxVersionLimitExceeded). The record was not written; writing again fails the same way "
            "until the label is removed")
    if not labelled:
        return RunbookError(
            what, id="record-version-limit", where=f"SSM parameter {name}",
            fix=(f"list the labelled versions: aws ssm get-parameter-history --name {shlex.quote(name)}{tail} "
                 "--query 'Parameters[?Labels].[Version,Labels]'; remove the label of the oldest: "
                 f"aws ssm unlabel-parameter-version --name {shlex.quote(name)} --parameter-version VERSION "
                 f"--labels LABEL{tail}; then {rewrite_command(scope)}"),
        )
    commands = [f"aws ssm unlabel-parameter-version --name {shlex.quote(name)} --parameter-version {version} "
                f"--labels {' '.join(shlex.quote(label) for label in labels)}{tail}"
                for version, labels in labelled]
    oldest = labelled[0]
    more = ""
    if len(commands) > 1:
        more = (f" ({len(commands) - 1} newer labelled version(s) will block again once they are the oldest; "
                "remove their labels too if they are not needed: " + "; ".join(commands[1:]) + ")")
    return RunbookError(
        f"{what}: version {oldest[0]} has the label(s) {', '.join(oldest[1])}",
        id="record-version-limit",
        where=f"SSM parameter {name}",
        fix=f"{commands[0]}{more}; then {rewrite_command(scope)}",
    )


def _cli_options(client: Any, endpoint_url: str | None, profile: str | None) -> str:
    """The AWS CLI options that aim a suggested ``aws ssm ...`` command where *client* calls: `` --region R``
    (the client's region), plus ``--endpoint-url`` and ``--profile`` when set; each value quoted for the shell."""
    options = [f"--region {shlex.quote(client.meta.region_name)}"] if getattr(client, "meta", None) else []
    if endpoint_url:
        options.append(f"--endpoint-url {shlex.quote(endpoint_url)}")
    if profile:
        options.append(f"--profile {shlex.quote(profile)}")
    return (" " + " ".join(options)) if options else ""


def _malformed_fix(client: Any, name: str, scope: str, endpoint_url: str | None, profile: str | None) -> str:
    """The fix for a malformed record: delete the parameter (every step refuses to apply over a record it
    cannot read, so applying again alone would refuse the same way), then apply, which writes a new one."""
    return (f"aws ssm delete-parameter --name {shlex.quote(name)}{_cli_options(client, endpoint_url, profile)} && "
            f"{rewrite_command(scope)}  (deletes the unreadable record, then applies again, which writes a new one)")


def read(client: Any, project: str, scope: str, endpoint_url: str | None = None,
         profile: str | None = None) -> dict[str, Any] | None:
    """*scope*'s applied record, or None if it was never applied.

    Args:
        client: an SSM client for the account the scope lives in, from :func:`runbook.aws.client`.
        project: the ``project`` short name from config/environments.yml.
        scope: ``"account"`` or an environment name.
        endpoint_url: a local AWS endpoint, or None.
        profile: the AWS profile in use, or None; only for the command a message suggests.

    One GetParameter call (throttling is retried by botocore, as the client is configured).
    Returns the record as a dict (``Record.to_dict()``: fingerprint, commit, branch, applied_by,
    applied_at, tool_version, scope, outputs); None when the parameter does not exist.

    Raises RunbookError when the caller lacks ``ssm:GetParameter``, when the value is not a valid
    record (naming the parameter, and the ``aws ssm delete-parameter`` command and the apply that
    replace it), when credentials are missing
    or expired, or on any other AWS error (named by its code).
    """
    name = parameter_name(project, scope)
    response = _call(client.get_parameter, name, scope, "ssm:GetParameter", endpoint_url, Name=name)
    if response is None:
        return None
    try:
        value = response["Parameter"]["Value"]
    except (KeyError, TypeError):
        raise RunbookError(
            f"AWS SSM answered GetParameter {name} without a value",
            id="not-an-aws-endpoint",
            where=f"endpoint {endpoint_url or 'AWS default'}",
            fix=f"check endpoint_url in {_config_file()} points at an AWS API, then run the command again",
        ) from None
    try:
        record = Record.from_json(value)
    except ValueError as error:
        raise RunbookError(
            f"The applied record for {scope} is malformed: {error}",
            id="record-malformed",
            where=f"SSM parameter {name}",
            fix=_malformed_fix(client, name, scope, endpoint_url, profile),
        ) from None
    if record.scope != scope:
        raise RunbookError(
            f"The applied record in {name} names scope {record.scope!r}, not {scope!r}",
            id="record-malformed",
            where=f"SSM parameter {name}",
            fix=_malformed_fix(client, name, scope, endpoint_url, profile),
        )
    return record.to_dict()


def compare(record: Record | Mapping[str, Any] | None, fingerprint: str) -> str:
    """Whether *fingerprint* (of the commit at hand) is what was last applied.

    Returns :data:`CURRENT` ("current") when the record's fingerprint equals it,
    :data:`PENDING` ("pending") when a record exists with another fingerprint, and
    :data:`NEVER_APPLIED` ("never-applied") when *record* is None.
    """
    if record is None:
        return NEVER_APPLIED
    applied = record.fingerprint if isinstance(record, Record) else record.get("fingerprint")
    return CURRENT if applied == fingerprint else PENDING


def _call(method, name: str, scope: str, permission: str, endpoint_url: str | None, **kwargs):
    """Call one SSM API; map its failures to RunbookError. Returns None on ParameterNotFound."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    where = f"SSM parameter {name}"
    try:
        return method(**kwargs)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ParameterNotFound":
            return None
        if code in DENIED_CODES:
            raise RunbookError(
                f"AWS refused {permission} on {name}",
                id="aws-access-denied",
                where=where,
                fix=f"grant {permission} on arn:aws:ssm:<region>:<account>:parameter{name} to the role you"
                " use, or switch to a role that has it (aws sts get-caller-identity shows the current one)",
            ) from None
        if code in CREDENTIAL_CODES:
            raise RunbookError(
                f"AWS rejected the credentials while reading or writing {name} ({code})",
                id="aws-credentials-rejected",
                where=where,
                fix="aws sso login (or refresh the credentials of AWS_PROFILE), then run the command again",
            ) from None
        if code in THROTTLING_CODES:
            raise Throttled(
                f"AWS SSM throttled the requests for {name} ({code}) even after botocore's retries",
                where=where,
                fix="wait a minute and run the command again; poll less often",
            ) from None
        if code == "TooManyUpdates":
            raise _Contended(f"Another writer was updating {name} at the same moment", where=where) from None
        if code == "ParameterMaxVersionLimitExceeded":
            raise _VersionLimit(f"{name} has 100 versions and the oldest is labelled", where=where) from None
        raise RunbookError(
            f"AWS SSM failed on {name}: {code or 'unknown error'}",
            id="aws-error",
            where=where,
            fix="check the AWS status and your permissions, then run the command again",
        ) from None
    except NoCredentialsError:
        raise RunbookError(
            f"No AWS credentials found to access {name}",
            id="aws-no-credentials",
            where=where,
            fix="set AWS_PROFILE or run aws sso login / aws configure",
        ) from None
    except NoRegionError:
        raise RunbookError(
            "No AWS region set for the SSM client",
            id="config-invalid",
            where=f"{_config_file()}, field accounts.*.region",
            fix=f"set the account's region in {_config_file()}",
        ) from None
    except EndpointConnectionError as error:
        raise RunbookError(
            f"Cannot reach the SSM endpoint {getattr(error, 'kwargs', {}).get('endpoint_url', endpoint_url)}",
            id="aws-unreachable",
            where=f"{_config_file()}, field accounts.*.endpoint_url ({endpoint_url or 'AWS default'})",
            fix="start the local AWS (moto_server / LocalStack) or remove endpoint_url",
        ) from None
    except BotoCoreError as error:
        from runbook.aws import login_error

        expired = login_error(error)  # an expired SSO login does not pass by waiting: never Transient
        if expired is not None:
            raise expired from None
        raise Transient(
            f"AWS SSM call on {name} failed: {type(error).__name__}",
            where=where,
            fix=f"check the network (and endpoint_url in {_config_file()}, if set), then run the command again",
        ) from None
