"""What is applied and what is pending: this commit's fingerprints against the applied records.

One source of truth for "is an IAM step needed", shared by ``inv iam.status``,
``inv release``, ``inv ci.rerun`` and the pipeline's gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from runbook import records
from runbook.config import Account, Config
from runbook.errors import RunbookError
from runbook.scopes import Scope

CURRENT = records.CURRENT
PENDING = records.PENDING
NEVER_APPLIED = records.NEVER_APPLIED
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ScopeStatus:
    """One scope's status.

    Attributes:
        scope: the scope.
        state: "current", "pending" (change pending), "never-applied" or "unknown".
        fingerprint: this commit's fingerprint (64 hex characters).
        record: the applied record as a dict, or None.
        reason: for "unknown", why (for example no access); else "".
    """

    scope: Scope
    state: str
    fingerprint: str
    record: dict | None = None
    reason: str = ""

    @property
    def needed(self) -> bool:
        """Whether the administrator must apply this scope (anything but current)."""
        return self.state != CURRENT

    @property
    def text(self) -> str:
        return {
            CURRENT: "current",
            PENDING: "change pending",
            NEVER_APPLIED: "never applied",
            UNKNOWN: f"unknown: {self.reason}",
        }[self.state]


def all_scopes(config: Config) -> list[Scope]:
    """Every scope of the configuration: each account that an environment uses, then each environment."""
    accounts: dict[str, Account] = {}
    for env in config.environments.values():
        accounts.setdefault(env.account.name, env.account)
    return [Scope.of_account(config, a) for a in accounts.values()] + [
        Scope.of_environment(config, e) for e in config.environments.values()
    ]


def read_state(scope: Scope, fingerprint: str, client: Any) -> ScopeStatus:
    """One SSM GetParameter for *scope*, compared with *fingerprint*.

    *client* is an SSM client for the scope's account (:func:`runbook.aws.client`).

    Raises RunbookError (including :class:`runbook.records.Throttled`) when the record cannot be read.
    """
    record = records.read(client, scope.config.project, scope.record_scope,
                          endpoint_url=scope.account.endpoint_url, profile=scope.account.profile)
    return ScopeStatus(scope, records.compare(record, fingerprint), fingerprint, record)


def examine(scopes: Iterable[Scope], *, session_for=None, use_profile: bool = True) -> list[ScopeStatus]:
    """The status of every scope, in the order given.

    Fingerprints are computed here (milliseconds each). SSM clients are made in
    this thread, one boto3 session per distinct profile (a client costs about
    0.1 s of CPU to build, and a session re-reads the service models, so they
    are shared where they can be); then the records of different accounts are
    read in parallel, one thread per account (boto3 clients are thread-safe,
    sessions are not). A scope whose record cannot be read is "unknown" with the
    reason; once an account's SSM does not answer (:class:`runbook.records.Transient`:
    a timeout, a dropped connection), its remaining scopes are "unknown" with the
    same reason without asking again, so an unresponsive endpoint costs one call's
    time-out (:func:`runbook.aws.client`), not one per scope. This function itself
    raises only for a fingerprint that cannot be computed (a missing root module).

    Args:
        scopes: the scopes to examine.
        session_for: callable Account -> boto3 Session (default: :func:`runbook.aws.session`).
        use_profile: passed to the default session factory.
    """
    from runbook import aws

    scopes = list(scopes)
    prints = {id(s): s.fingerprint() for s in scopes}
    by_account: dict[str, list[Scope]] = {}
    for scope in scopes:
        by_account.setdefault(scope.account.name, []).append(scope)

    sessions: dict[Any, Any] = {}
    clients: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, group in by_account.items():
        account = group[0].account
        key = account.profile if use_profile else None
        try:
            if key not in sessions:
                sessions[key] = (session_for or (lambda a: aws.session(a, use_profile=use_profile)))(account)
            clients[name] = aws.client(sessions[key], "ssm", account)
        except RunbookError as exc:
            failed[name] = exc.what

    def one_account(name: str) -> list[ScopeStatus]:
        group = by_account[name]
        if name in failed:
            return [ScopeStatus(s, UNKNOWN, prints[id(s)], reason=failed[name]) for s in group]
        out = []
        gone = ""  # the account's SSM did not answer: its other records are not asked for (each ask takes ~30 s)
        for scope in group:
            if gone:
                out.append(ScopeStatus(scope, UNKNOWN, prints[id(scope)], reason=gone))
                continue
            try:
                out.append(read_state(scope, prints[id(scope)], clients[name]))
            except records.Transient as exc:
                gone = f"not asked, the same SSM did not answer ({type(exc.__context__).__name__})"
                out.append(ScopeStatus(scope, UNKNOWN, prints[id(scope)], reason=_short(exc)))
            except RunbookError as exc:
                out.append(ScopeStatus(scope, UNKNOWN, prints[id(scope)], reason=_short(exc)))
        return out

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(by_account)))) as pool:
        results = list(pool.map(one_account, list(by_account)))
    found = {id(st.scope): st for group in results for st in group}
    return [found[id(s)] for s in scopes]


def _short(exc: RunbookError) -> str:
    return exc.what.split(". ")[0].rstrip(".")


def commands(statuses: Iterable[ScopeStatus], via=None, *, branch: str | None = None) -> list[str]:
    """The commands that apply every scope that is pending or never applied, in order (account first).

    Args:
        statuses: from :func:`examine`.
        via: the environment whose branch applies an account scope (default: the environment of
            *branch* when it uses that account, else the account's first environment).
        branch: the branch checked out where the commands will be pasted, or None when unknown.
            A command that must run from another branch starts with ``git checkout BRANCH &&
            git pull --ff-only &&`` (the branch quoted for the shell), because the IAM steps refuse
            to apply from any branch but the environment's.

    Scopes in state "unknown" are left out: their record could not be read, so
    applying is not known to be needed; their reason says what to fix.
    """
    import shlex

    out = []
    for st in statuses:
        if st.state not in (PENDING, NEVER_APPLIED):
            continue
        scope = st.scope
        env = scope.environment or via or _environment_of(scope, branch)
        command = scope.command(env)
        needs = env.branch if env else None
        if branch is not None and needs is not None and needs != branch:
            command = f"git checkout {shlex.quote(needs)} && git pull --ff-only && {command}"
        out.append(command)
    return out


def _environment_of(scope: Scope, branch: str | None):
    """The environment checked out on *branch* if it lives in *scope*'s account, else the account's first."""
    in_account = [e for e in scope.config.environments.values() if e.account == scope.account]
    return next((e for e in in_account if e.branch == branch), in_account[0] if in_account else None)
