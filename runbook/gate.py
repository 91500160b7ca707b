"""The pipeline's IAM gate: wait until the IAM for this commit is applied, then let the deploy run.

Run by the ``iam-gate`` job with the CI deployer's read-only rights (``ssm:GetParameter`` on
``/<project>/iam/*`` and ``iam:GetRole`` on the project's lambda roles, granted by the account root
module). The fingerprints come from git alone (:func:`runbook.records.head_trees`), so a shallow clone
will do.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runbook import aws, console, git, records
from runbook.config import Config, Environment
from runbook.errors import RunbookError, Transient
from runbook.scopes import for_environment

LAMBDA_PRINCIPAL = "lambda.amazonaws.com"
DEFAULT_SETTLE_S = 10.0
DEFAULT_REPORT_S = 300.0
"""Seconds between the gate's "still waiting" lines (``inv ci.gate --report-min``)."""
WEBHOOK_VARIABLE = "RUNBOOK_GATE_WEBHOOK"
"""The variable (from the job's context) with a Slack-compatible incoming webhook URL: a secret, masked like every
variable whose name says WEBHOOK (:func:`runbook.console.mask`)."""


@dataclass
class GateResult:
    """How the gate ended: the statuses it passed on, seconds waited, record polls made."""

    statuses: list[records.ScopeStatus]
    waited_s: float
    polls: int


def role_problems(iam_client: Any, role_names: list[str], account=None) -> list[str]:
    """What is wrong with the lambda execution roles: missing, or not trusting lambda.amazonaws.com.

    One IAM GetRole per role (IAM API reference, GetRole; boto3 returns the trust policy decoded, the raw API
    URL-encoded). Returns an empty list when every role is fine. Raises :class:`~runbook.errors.Transient` when
    IAM answers 5xx, throttles or does not answer (pollers try again), RunbookError for a refusal.
    """

    problems = []
    for name in role_names:
        found = aws.call("IAM GetRole", f"role {name}", account, lambda n=name: iam_client.get_role(RoleName=n),
                         absent=("NoSuchEntity",), permission="iam:GetRole",
                         fix="grant the CI deployer iam:GetRole on the project's lambda roles (the account root module "
                             "does): inv iam.account")
        if found is None:
            problems.append(f"role {name} does not exist")
        elif not _trusts_lambda(found["Role"].get("AssumeRolePolicyDocument")):
            problems.append(f"role {name} does not trust {LAMBDA_PRINCIPAL}")
    return problems


def _listed(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _trusts_lambda(document: Any) -> bool:
    """Whether a trust policy lets lambda.amazonaws.com assume the role: an Allow of ``sts:AssumeRole`` (or
    ``sts:*``) to the Lambda service principal, and no Deny naming it (an explicit Deny wins: IAM User Guide,
    "Policy evaluation logic"). Conditions on an Allow (``aws:SourceAccount``) do not stop Lambda itself."""
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document))
    statements = (document or {}).get("Statement", [])
    allowed = False
    for st in statements if isinstance(statements, list) else [statements]:
        principal = st.get("Principal") or {}
        services = _listed(principal.get("Service")) if isinstance(principal, dict) else []
        if not ((LAMBDA_PRINCIPAL in services or principal == "*")
                and any(a in ("sts:AssumeRole", "sts:*", "*") for a in _listed(st.get("Action")))):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or (st.get("Effect") == "Allow" and LAMBDA_PRINCIPAL in services)
    return allowed


def recorded_roles(record: dict | None) -> tuple[list[str], str | None]:
    """The environment record's ``outputs.lambda_role_names``, and what is wrong with it (or None)."""
    outputs = (record or {}).get("outputs") or {}
    if "lambda_role_names" not in outputs:
        return [], "the environment record has no lambda_role_names output (the root module must output it)"
    names = outputs["lambda_role_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return [], "the environment record's lambda_role_names is not a list of role names"
    return names, None


def wait(config: Config, environment: Environment, *, timeout_s: float = 1800.0, poll_s: float = 15.0,
         settle_s: float = DEFAULT_SETTLE_S, session: Any = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic, trees: dict | None = None,
         report_s: float = DEFAULT_REPORT_S, notify: Callable[[str], None] | None = None) -> GateResult:
    """Block until the account and environment records match this commit, then return.

    The fingerprints of this commit's scopes are computed once. Each poll reads both records (one SSM
    GetParameter per scope). When both match, the roles in the environment record's ``lambda_role_names`` must
    exist and trust ``lambda.amazonaws.com``; then the gate waits *settle_s* more seconds, because IAM is
    eventually consistent (AWS IAM User Guide, "Changes that I make are not always immediately visible"). What is
    pending is printed when it changes, with the commands an administrator must run, and a "still waiting" line
    every *report_s* seconds. *notify* is told once when the gate starts waiting and once when it opens or gives
    up (a gate that opens at once tells nothing).

    Args:
        config, environment: the configuration and the environment being deployed.
        timeout_s: give up after this many seconds.
        poll_s: seconds between polls; doubled (up to 4x) while AWS throttles or fails with a 5xx.
        settle_s: seconds to wait after everything matches, cut short so that the gate never runs past
            *timeout_s*; must be smaller than *timeout_s*.
        session: boto3 Session for the environment's account (default: the standard credential chain, ignoring
            configured profiles: in CI the credentials come from the job).
        sleep, clock, trees: injectable for tests (*trees*: the commit's tree ids; default HEAD's, from git).
        report_s: seconds between "still waiting" lines.
        notify: called with each notification's text (default: :func:`post_webhook` when ``$RUNBOOK_GATE_WEBHOOK``
            is set, else nothing).

    Returns a GateResult. Raises RunbookError at the timeout, naming the commands and ``inv ci.rerun --env
    NAME``, or at once when the records cannot be read for a reason that does not pass by waiting.
    """
    if settle_s >= timeout_s:
        raise RunbookError(f"--settle-s ({settle_s:g} s) must be smaller than --timeout-s ({timeout_s:g} s): the "
                           "settle time is part of the gate's time, so the gate could never open", id="flag-invalid",
                           fix=f"for example --timeout-s {max(timeout_s, 1800):g} --settle-s {DEFAULT_SETTLE_S:g}")
    scopes, account = for_environment(config, environment), environment.account
    trees = records.head_trees(scopes) if trees is None else trees
    session = session or aws.session(account, use_profile=False)
    # Each poll must end well within the gate's own deadline: short timeouts, one retry.
    short = {"read_timeout_s": min(10.0, max(1.0, poll_s)), "attempts": 1}
    ssm = aws.client(session, "ssm", account, **short)
    started, delay, polls, told, last_error = clock(), poll_s, 0, None, None
    reported = started

    def tell(what: str) -> None:  # only when someone listens: the commit is looked up then
        if notify is not None or os.environ.get(WEBHOOK_VARIABLE):
            (notify or post_webhook)(f"IAM gate for {environment.name} at commit {_commit()}: {what}")

    while True:
        try:
            statuses = [records.compare(s, trees, records.read(ssm, s.parameter, s.name, account)) for s in scopes]
            polls, delay = polls + 1, poll_s
            problems: list[str] = []
            if all(st.state == records.CURRENT for st in statuses):
                names, wrong = recorded_roles(statuses[-1].record)
                problems = [wrong] if wrong else role_problems(aws.client(session, "iam", account, **short), names,
                                                                          account)
                if not problems:
                    settle = min(settle_s, max(0.0, timeout_s - (clock() - started)))
                    if settle > 0:
                        cut = f" (of {settle_s:g} s: the rest of --timeout-s)" if settle < settle_s else ""
                        console.say(f"IAM for this commit is applied; waiting {settle:.0f} s{cut} for IAM propagation.")
                        sleep(settle)
                    roles = (f"its {len(names)} lambda role(s) trust {LAMBDA_PRINCIPAL}" if names else
                             "it lists no lambda roles to check")
                    console.ok(f"IAM gate open for {environment.name}: account and environment records match this "
                               f"commit, and {roles}.")
                    if told is not None:
                        tell(f"OPEN after {(clock() - started) / 60:.0f} min; the deploy goes on.")
                    return GateResult(statuses, clock() - started, polls)
            message = _instructions(environment, statuses, problems)
            if message != told:
                console.warn(message)
                if told is None:
                    tell(f"WAITING for the IAM. {_unblock(environment, statuses, problems)}")
                told = message
            if clock() - reported >= report_s:
                reported, elapsed = clock(), clock() - started
                console.say(f"Still waiting for {environment.name}: {elapsed / 60:.1f} min so far, "
                            f"{max(0.0, timeout_s - elapsed) / 60:.1f} min left. "
                            + _unblock(environment, statuses, problems))
        except Transient as exc:
            delay, last_error = min(delay * 2, poll_s * 4), exc
        except RunbookError as exc:
            exc.fix = _in_the_pipeline(exc, config, environment)
            if told is not None:
                tell(f"GAVE UP ({exc.id}): {exc.what}")
            raise
        elapsed = clock() - started
        if elapsed >= timeout_s:  # the last look was at the deadline: poll right up to it, never stop early
            if told is None:
                raise RunbookError(f"The IAM gate for {environment.name} timed out after {elapsed:.0f} s without "
                                   "reading the applied records and roles: "
                                   f"{last_error.what if last_error else 'no answer'}", id="gate-timeout",
                                   fix=f"check the network and AWS's health, then `inv ci.rerun --env "
                                       f"{environment.name}` once the records can be read")
            tell(f"GAVE UP after {elapsed / 60:.0f} min. {_unblock(environment, statuses, problems)}")
            raise RunbookError(f"The IAM gate for {environment.name} timed out after {elapsed:.0f} s; what it waited "
                               "for is listed above", id="gate-timeout",
                               fix=f"an administrator runs those commands from branch {environment.branch}, then "
                                   f"`inv ci.rerun --env {environment.name}` (or simply `inv release --env "
                                   f"{environment.name}`)")
        sleep(min(delay, timeout_s - elapsed))


def _unblock(environment: Environment, statuses: list[records.ScopeStatus], problems: list[str]) -> str:
    """What is pending and the commands that unblock the gate, on one line."""
    pending = [f"{st.scope.label}: {st.text}" for st in statuses if st.needed] + problems
    commands = records.commands(statuses, environment) or [statuses[-1].scope.command(environment)]
    return (f"Pending: {'; '.join(pending)}. Unblock (an administrator, from branch {environment.branch}): "
            f"{' && '.join(commands)}, or inv release --env {environment.name}." + _job_page())


def _commit() -> str:
    """The commit the gate is for: CircleCI's CIRCLE_SHA1, else HEAD ("?" when git cannot say: a notification
    never stops the gate)."""
    try:
        return (os.environ.get("CIRCLE_SHA1") or git.head_commit())[:12]
    except RunbookError:
        return "?"


def _job_page() -> str:
    """" Workflow <id>: <the job's page>", from CircleCI's built-in variables CIRCLE_WORKFLOW_ID and CIRCLE_BUILD_URL
    (https://circleci.com/docs/variables/#built-in-environment-variables); "" outside CircleCI."""
    page = os.environ.get("CIRCLE_BUILD_URL", "")
    return f" Workflow {os.environ.get('CIRCLE_WORKFLOW_ID', '?')}: {page}" if page else ""


WEBHOOK_DEADLINE_S = 5.0
"""The longest the gate spends on one notification, in seconds, however slowly the webhook answers."""


def post_webhook(text: str) -> None:
    """Post *text* (masked) as ``{"text": ...}`` to the Slack-compatible incoming webhook in ``$RUNBOOK_GATE_WEBHOOK``
    (https://api.slack.com/messaging/webhooks); nothing when it is unset. One POST, no redirect followed (either could
    post twice), given at most :data:`WEBHOOK_DEADLINE_S` seconds in all (a webhook that trickles its answer is left
    behind). A failure is a warning naming the HTTP status or the error's type, never the URL (a secret) or any part
    of it, and never stops the gate."""
    url = os.environ.get(WEBHOOK_VARIABLE, "").strip()
    if not url:
        return
    import requests

    outcome: list[str | None] = []

    def post() -> None:
        try:
            answer = requests.post(url, json={"text": console.mask(text)}, timeout=WEBHOOK_DEADLINE_S,
                                   allow_redirects=False)
            outcome.append(None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}")
        except Exception as exc:  # noqa: BLE001 - requests and urllib3 raise many kinds for a bad URL; all are a warning
            outcome.append(type(exc).__name__)

    worker = threading.Thread(target=post, name="gate-webhook", daemon=True)
    worker.start()
    worker.join(WEBHOOK_DEADLINE_S)
    problem = outcome[0] if outcome else f"no answer within {WEBHOOK_DEADLINE_S:g} s"
    if problem:
        console.warn(f"The gate's notification to ${WEBHOOK_VARIABLE} failed ({problem}); the gate goes on.")


def _in_the_pipeline(exc: RunbookError, config: Config, environment: Environment) -> str | None:
    """The fix of an AWS failure of the gate, said for a CircleCI job of *config*'s deployer (``circleci.deployer``:
    "oidc", the role and the job's token; "user", the legacy access key in the context)."""
    rerun = f"then rerun the job (inv ci.rerun --env {environment.name})"
    oidc = config.circleci is not None and config.circleci.deployer == "oidc"
    if exc.id in ("oidc-token-refused", "oidc-token-expired"):
        return f"{exc.fix}; {rerun}"
    if exc.id == "aws-no-credentials":
        return (f"the job's aws-credentials step (.circleci/aws-credentials.sh {environment.name}) must run before the "
                "gate: it gives the job the deployer role through its OIDC token; " + rerun if oidc else
                "put the CI deployer user's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the job's context; " + rerun)
    if exc.id == "aws-credentials-rejected":
        return ("the job's keys expired or were revoked (a deployer role session lasts one hour at most); " + rerun
                if oidc else "replace the CI deployer user's access key in the job's context; " + rerun)
    if exc.id == "aws-access-denied":
        who = "the deployer role (AWS_ROLE_ARN)" if oidc else "the CI deployer user whose key is in the context"
        return (f"the gate reads /{config.project}/iam/* and GetRole on the lambda roles as {who}, which the account "
                f"root grants: apply the account step (inv iam.account --env {environment.name}); " + rerun)
    return exc.fix


def _instructions(environment: Environment, statuses: list[records.ScopeStatus], problems: list[str]) -> str:
    if problems and all(st.state == records.CURRENT for st in statuses):
        lines = [f"Waiting: the records match this commit, but the lambda roles of {environment.name} are not right."]
    else:
        lines = [f"Waiting: the IAM for this commit is not applied yet for {environment.name}."]
    lines += [f"  - {st.scope.label}: {st.text}; run: {st.scope.command(environment)}" for st in statuses if st.needed]
    lines += [f"  - {problem}; run: {statuses[-1].scope.command(environment)}" for problem in problems]
    lines.append(f"  (as an administrator, from a clean checkout of {environment.branch}; or all at once: inv release "
                 f"--env {environment.name})")
    return "\n".join(lines)
