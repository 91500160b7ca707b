"""The pipeline's IAM gate: wait until the IAM for this commit is applied, then let the deploy run.

Run by the ``iam-gate`` job with the CI deployer's read-only rights
(``ssm:GetParameter`` on ``/<project>/iam/*`` and ``iam:GetRole`` on the
project's lambda roles, granted by the account root module).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runbook import console, records
from runbook.aws import THROTTLING_CODES
from runbook.config import Config, Environment
from runbook.errors import RunbookError
from runbook.scopes import for_environment
from runbook.status import CURRENT, ScopeStatus, read_state

LAMBDA_PRINCIPAL = "lambda.amazonaws.com"
DEFAULT_SETTLE_S = 10.0


@dataclass
class GateResult:
    """How the gate ended: the statuses it passed on, seconds waited, SSM reads made."""

    statuses: list[ScopeStatus]
    waited_s: float
    polls: int


def role_problems(iam_client: Any, role_names: list[str]) -> list[str]:
    """What is wrong with the lambda execution roles: missing, or not trusting lambda.amazonaws.com.

    One IAM GetRole per role. The trust policy is the role's ``AssumeRolePolicyDocument``
    (IAM API reference, GetRole; boto3 returns it decoded, the raw API URL-encoded).
    Returns an empty list when every role is fine. Raises records.Transient when IAM answers
    with a 5xx or throttling, or does not answer (after botocore's own retries): pollers try
    again; RunbookError for a refusal (no iam:GetRole).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    problems = []
    for name in role_names:
        try:
            role = iam_client.get_role(RoleName=name)["Role"]
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
            if code == "NoSuchEntity":
                problems.append(f"role {name} does not exist")
                continue
            if transient(exc):
                raise records.Transient(
                    f"IAM GetRole {name} failed for now ({code or type(exc).__name__})",
                    fix="nothing: the gate tries again",
                ) from None
            raise RunbookError(
                f"IAM GetRole {name} failed ({code})",
                id="aws-access-denied",
                fix="grant the CI deployer iam:GetRole on the project's lambda roles (account root module): "
                "inv iam.account",
            ) from None
        if not _trusts_lambda(role.get("AssumeRolePolicyDocument")):
            problems.append(f"role {name} does not trust {LAMBDA_PRINCIPAL}")
    return problems


def transient(exc: BaseException | None) -> bool:
    """Whether an AWS failure may pass by itself: an HTTP 5xx, throttling, a timeout or a dropped connection.

    *exc* is a botocore ClientError or BotoCoreError, or a RunbookError raised while handling one
    (then its ``__context__`` is looked at). Throttling codes: ``aws.THROTTLING_CODES``; 5xx:
    AWS's server-side errors (https://docs.aws.amazon.com/general/latest/gr/api-retries.html). An
    endpoint that refuses connections is not transient: it is a wrong endpoint_url or no network.
    """
    from botocore.exceptions import ClientError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError

    if isinstance(exc, RunbookError):
        exc = exc.__context__
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or exc.response.get("Error", {}).get("Code", "") in THROTTLING_CODES
    return isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, ConnectionClosedError))


def _listed(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _trusts_lambda(document: Any) -> bool:
    """Whether a trust policy lets lambda.amazonaws.com assume the role.

    An Allow of ``sts:AssumeRole`` (or ``sts:*``) to the Lambda service principal is needed, and no
    Deny may name that principal (IAM evaluation: an explicit Deny wins; IAM User Guide, "Policy
    evaluation logic"). Conditions on an Allow (``aws:SourceAccount``, the usual guard against the
    confused deputy) do not stop Lambda itself, so they are accepted.
    """
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document))
    statements = (document or {}).get("Statement", [])
    allowed = False
    for st in statements if isinstance(statements, list) else [statements]:
        principal = st.get("Principal") or {}
        services = _listed(principal.get("Service")) if isinstance(principal, dict) else []
        actions = _listed(st.get("Action"))
        names_lambda = LAMBDA_PRINCIPAL in services or principal == "*"
        assumes = any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions)
        if not (names_lambda and assumes):
            continue
        if st.get("Effect") == "Deny":
            return False
        if st.get("Effect") == "Allow" and LAMBDA_PRINCIPAL in services:
            allowed = True
    return allowed


def recorded_roles(record: dict | None) -> tuple[list[str], str | None]:
    """The environment record's ``outputs.lambda_role_names``, and what is wrong with it (or None)."""
    outputs = (record or {}).get("outputs") or {}
    if "lambda_role_names" not in outputs:
        return [], ("the environment record has no lambda_role_names output (the root module must output "
                    "it)")
    names = outputs["lambda_role_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return [], "the environment record's lambda_role_names is not a list of role names"
    return names, None


def wait(
    config: Config,
    environment: Environment,
    *,
    timeout_s: float = 1800.0,
    poll_s: float = 15.0,
    settle_s: float = DEFAULT_SETTLE_S,
    session: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> GateResult:
    """Block until the account and environment records match this commit, then return.

    The fingerprints of this commit's account and environment scopes are
    computed once. Each poll reads both records (one SSM GetParameter per scope).
    When both match, the roles in the environment record's ``lambda_role_names``
    must exist and trust ``lambda.amazonaws.com``; then the gate waits
    *settle_s* more seconds, because IAM is eventually consistent: a role
    that was just created or changed may not yet be usable by Lambda in every
    region (AWS IAM User Guide, "Changes that I make are not always immediately
    visible"). What is pending is printed once, with the commands an
    administrator must run.

    Args:
        config: the configuration.
        environment: the environment being deployed.
        timeout_s: give up after this many seconds.
        poll_s: seconds between polls; doubled (up to 4x) while SSM throttles.
        settle_s: seconds to wait after everything matches, for IAM propagation; cut short so
            that the gate never runs past *timeout_s*. Must be smaller than *timeout_s*.
        session: boto3 Session for the environment's account (default: from the
            standard credential chain, ignoring configured profiles: in CI the
            credentials come from the context).
        sleep, clock: injectable for tests.

    Returns a GateResult. Raises RunbookError at the timeout, naming the commands
    and ``inv ci.rerun --env NAME``; or at once when the records cannot be read
    (no access, no credentials; the message then names the CircleCI context).
    A 5xx, throttling or no answer from SSM or IAM is transient: the gate keeps
    polling (backing off) until the timeout.
    """
    from runbook import aws

    if settle_s >= timeout_s:
        raise RunbookError(
            f"--settle-s ({settle_s:g} s) must be smaller than --timeout-s ({timeout_s:g} s): the settle time is "
            "part of the gate's time, so the gate could never open",
            id="flag-invalid",
            fix=f"for example --timeout-s {max(timeout_s, 1800):g} --settle-s {DEFAULT_SETTLE_S:g}",
        )
    scopes = for_environment(config, environment)
    prints = [s.fingerprint() for s in scopes]
    session = session or aws.session(environment.account, use_profile=False)
    # Each poll must end well within the gate's own deadline: short timeouts, one retry.
    ssm_client = aws.client(session, "ssm", environment.account, read_timeout_s=min(10.0, max(1.0, poll_s)),
                            attempts=1)
    iam_client = None
    started = clock()
    delay = poll_s
    polls = 0
    told: str | None = None
    last_error: RunbookError | None = None
    while True:
        try:
            try:
                statuses = [read_state(s, fp, ssm_client) for s, fp in zip(scopes, prints, strict=True)]
            except records.Transient:
                raise
            except RunbookError as exc:
                if transient(exc):  # an SSM 5xx: records.read reports it as a failure, the gate waits it out
                    raise records.Transient(exc.what, where=exc.where, fix=exc.fix) from None
                exc.fix = (exc.fix or "") + (" (in CircleCI: the job's context must hold the CI deployer's AWS "
                                             "credentials, which may read /<project>/iam/*)")
                raise
            polls += 1
            delay = poll_s
        except records.Transient as exc:
            statuses = None
            delay = min(delay * 2, poll_s * 4)
            last_error = exc
        if statuses is not None:
            pending = [st for st in statuses if st.state != CURRENT]
            problems: list[str] | None = []
            if not pending:
                names, wrong = recorded_roles(statuses[-1].record)
                if wrong:
                    problems = [wrong]
                else:
                    iam_client = iam_client or aws.client(session, "iam", environment.account)
                    try:
                        problems = role_problems(iam_client, names)
                    except records.Transient as exc:
                        problems = None
                        delay = min(delay * 2, poll_s * 4)
                        last_error = exc
                if problems is None:
                    pass  # IAM did not answer usefully: poll again
                elif not problems:
                    settle = min(settle_s, max(0.0, timeout_s - (clock() - started)))  # within the deadline
                    if settle > 0:
                        cut = f" (of {settle_s:g} s: the rest of --timeout-s)" if settle < settle_s else ""
                        console.say(f"IAM for this commit is applied; waiting {settle:.0f} s{cut} for IAM "
                                    "propagation.")
                        sleep(settle)
                    roles = (f"its {len(names)} lambda role(s) trust lambda.amazonaws.com" if names
                             else "it lists no lambda roles to check")
                    console.ok(f"IAM gate open for {environment.name}: account and environment records match "
                               f"this commit, and {roles}.")
                    return GateResult(statuses, clock() - started, polls)
            message = _instructions(environment, statuses, problems) if problems is not None else told
            if message != told:
                console.warn(message)
                told = message
        elapsed = clock() - started
        if elapsed >= timeout_s:  # the last look was at the deadline: poll right up to it, never stop early
            if told is None:
                raise RunbookError(
                    f"The IAM gate for {environment.name} timed out after {elapsed:.0f} s without reading the "
                    f"applied records and roles: {last_error.what if last_error else 'no answer'}",
                    id="gate-timeout",
                    fix="check the network and AWS's health, then `inv ci.rerun --env "
                    f"{environment.name}` once the records can be read",
                )
            raise RunbookError(
                f"The IAM gate for {environment.name} timed out after {elapsed:.0f} s; what it waited for is "
                "listed above",
                id="gate-timeout",
                fix=f"an administrator runs those commands from branch {environment.branch}, then "
                f"`inv ci.rerun --env {environment.name}` (or simply `inv release --env {environment.name}`)",
            )
        sleep(min(delay, timeout_s - elapsed))


def _instructions(environment: Environment, statuses: list[ScopeStatus], problems: list[str]) -> str:
    if problems and all(st.state == CURRENT for st in statuses):
        head = f"Waiting: the records match this commit, but the lambda roles of {environment.name} are not right."
    else:
        head = f"Waiting: the IAM for this commit is not applied yet for {environment.name}."
    lines = [head]
    for st in statuses:
        if st.state != CURRENT:
            lines.append(f"  - {st.scope.label}: {st.text}; run: {st.scope.command(environment)}")
    for problem in problems:
        lines.append(f"  - {problem}; run: {statuses[-1].scope.command(environment)}")
    lines.append(f"  (as an administrator, from a clean checkout of {environment.branch}; "
                 f"or all at once: inv release --env {environment.name})")
    return "\n".join(lines)
