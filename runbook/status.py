"""What is applied and what is pending: this commit's fingerprints against the applied records.

One source of truth for "is an IAM step needed", shared by ``inv iam.status``, ``inv release``,
``inv ci.rerun``, ``inv ci.diagnose`` and the pipeline's gate. :func:`compare` decides (a pure
function); :func:`examine` reads the records and decides for a list of scopes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runbook import aws, git, records
from runbook.config import PROJECT_ROOT, Account, Environment
from runbook.errors import RunbookError, Transient
from runbook.scopes import Scope

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


def head_trees(scopes: Iterable[Scope], commit: str = "HEAD") -> dict[str, str | None]:
    """The tree ids of every path of *scopes* at *commit* (one ``git ls-tree`` in this repository)."""
    return git.trees(commit, [p for s in scopes for p in s.paths], PROJECT_ROOT)


def examine(scopes: Iterable[Scope], *, trees: Mapping[str, str | None] | None = None,
            session_for: Callable[[Account], Any] | None = None, use_profile: bool = True) -> list[ScopeStatus]:
    """The status of every scope, in the order given.

    Args:
        scopes: the scopes to examine.
        trees: the commit's tree ids (default: HEAD's, :func:`head_trees`).
        session_for: Account -> boto3 Session (default :func:`runbook.aws.session`, one per account).
        use_profile: passed to the default session factory (the pipeline ignores profiles).

    One SSM GetParameter per scope. A scope whose record cannot be read is "unknown" with the reason; once an
    account's SSM does not answer (:class:`~runbook.errors.Transient`), its remaining scopes are "unknown"
    without asking again, so an unresponsive endpoint costs one call's time-out, not one per scope. Raises
    only for a fingerprint that cannot be computed (a root module folder missing from the commit).
    """
    scopes = list(scopes)
    trees = head_trees(scopes) if trees is None else trees
    clients: dict[str, Any] = {}
    gone: dict[str, str] = {}
    out = []
    for scope in scopes:
        account = scope.account
        scope.fingerprint(trees)  # a missing root module is the caller's error, not a status
        try:
            if account.name in gone:
                raise Transient(gone[account.name])
            if account.name not in clients:
                sess = session_for(account) if session_for else aws.session(account, use_profile=use_profile)
                clients[account.name] = aws.client(sess, "ssm", account)
            out.append(compare(scope, trees, records.read(clients[account.name], scope.parameter, scope.name,
                                                          account)))
        except RunbookError as exc:
            reason = exc.what.split(". ")[0].rstrip(".")
            if isinstance(exc, Transient) and account.name not in gone:
                gone[account.name] = f"not asked, the same SSM did not answer ({reason})"
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
    to fix.
    """
    return list(dict.fromkeys(st.scope.branch_command(branch, via) for st in statuses
                              if st.state in (PENDING, NEVER_APPLIED)))
