"""Examine: one phase gathers a run's facts once, into an immutable value (:class:`Facts`).

:func:`examine_local` looks at what this machine knows; :func:`examine_aws` then asks AWS, only in a real run
and only when the local findings let it go on. Nothing here decides (:mod:`runbook.decide`) or changes anything
outside the runbook's own working folders; each fact is printed as it is found.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from runbook import aws, backend, console, git, records, snapshot, versions
from runbook.config import PROJECT_ROOT, Config, Environment
from runbook.errors import RunbookError
from runbook.scopes import Scope, account_scopes


@dataclass(frozen=True)
class Options:
    """What the user asked for: ``dry_run`` (examine offline, print the actions, change nothing), ``assume_yes``
    (answer confirmations), ``skip_branch_check`` (apply from another branch, loudly), ``take_over`` (replace
    another branch's account IAM), ``lock_timeout_s`` (seconds Terraform waits for a held state lock),
    ``only_needed`` (``inv release``: skip the scopes whose record is current), ``verbose`` (a dry run shows each
    step's environment and credentials too), ``read_only`` (``inv iam.plan``, ``inv iam.drift``: plans only)."""

    dry_run: bool = False
    assume_yes: bool = False
    skip_branch_check: bool = False
    take_over: bool = False
    lock_timeout_s: float = 0.0
    only_needed: bool = False
    verbose: bool = False
    read_only: bool = False


@dataclass(frozen=True)
class Facts:
    """Everything one run found, gathered once. AWS fields stay empty in a dry run.

    Attributes:
        config, environment: the configuration and the environment whose branch is deployed.
        scopes: the scopes the run may apply, in order (account first).
        checkout: branch, HEAD and uncommitted paths; ``trees``: tree ids at HEAD of every scope's paths.
        remote, remote_head: the team's remote and its commit of the branch (None: no such branch).
        config_committed: the configuration file in use is HEAD's, unchanged.
        snapshots: scope name -> its snapshot of HEAD; ``unpinned``: remote module sources that are not pinned.
        blocked: what stopped a look-up (a team remote that cannot be told, what failed runs left in the working
            folders): findings, raised first.
        terraform: the binary found and its version (None in a dry run: only its presence is checked).
        identity, credentials: the caller identity and the frozen keys it was asked with.
        state: the backend as looked at; ``records``: scope name -> applied record (None: never applied) for
            the scopes read; ``evidence``: signs of an earlier deploy when the backend is incomplete;
            ``digests``: the lock table's state digests then, or when a state has gone; ``hints``: scope name ->
            how to bring back a state object that has gone.
    """

    config: Config
    environment: Environment
    scopes: tuple[Scope, ...]
    opts: Options
    checkout: git.Checkout
    trees: Mapping[str, str | None]
    remote: git.TeamRemote | None = None
    remote_head: str | None = None
    config_committed: bool = True
    snapshots: Mapping[str, snapshot.Snapshot] = field(default_factory=dict)
    unpinned: tuple[str, ...] = ()
    blocked: tuple[RunbookError, ...] = ()
    terraform: versions.Found | None = None
    identity: aws.Identity | None = None
    credentials: aws.Credentials | None = field(default=None, repr=False)
    state: backend.BackendState | None = None
    records: Mapping[str, dict | None] = field(default_factory=dict)
    evidence: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    hints: Mapping[str, str] = field(default_factory=dict)
    session: object = field(default=None, repr=False, compare=False)  # boto3 Session with the frozen credentials

    @property
    def account(self):
        return self.scopes[0].account

    @property
    def backend(self):
        """The backend of the run's first scope: the bucket and lock table every scope of the run shares."""
        return self.scopes[0].backend

    @property
    def target_branch(self) -> str:
        """The branch whose remote commit HEAD must equal: the environment's, or with --skip-branch-check HEAD's."""
        if self.opts.skip_branch_check and self.checkout.branch:
            return self.checkout.branch
        return self.environment.branch

    @property
    def rehearsal(self) -> bool:
        """Every account the run touches is a local AWS (a loopback ``endpoint_url``): a rehearsal."""
        return all(s.account.local for s in self.scopes)


def fact(name: str, text: str) -> None:
    """Print one fact as it is found: ``  name:  text``."""
    console.say(f"  {name + ':':<11}{text}")


def examine_local(config: Config, environment: Environment, scopes: list[Scope], opts: Options,
                  command: str, checkout: git.Checkout | None = None) -> Facts:
    """The facts this machine knows: git (one ``git status``, one ``git ls-tree``, the team's remote and, in a real
    run, one ``git fetch``), a snapshot of HEAD per scope (its ``.tf`` settings read), Terraform (in a real run
    its version). Raises RunbookError only for a failure to look (git missing, not a checkout); what the facts
    mean is for :mod:`runbook.decide`. *command* (the command line that resumes the run) ends the fix of
    what a failed Terraform run left behind, so that the fix can be pasted as it is; *checkout*, the checkout
    if the caller inspected it already."""
    probe = None if opts.dry_run else versions.Terraform().probe()  # its answer is taken at the end
    checkout = checkout or git.inspect()
    real, top = Path(config.path).resolve(), Path(PROJECT_ROOT).resolve()
    rel = real.relative_to(top).as_posix() if real.is_relative_to(top) else None  # None: outside the repository
    trees = git.trees(checkout.head, [p for s in scopes for p in s.paths] + ([rel] if rel else []), PROJECT_ROOT)
    committed = bool(rel and trees.pop(rel, None) and rel not in checkout.changes)
    facts = Facts(config, environment, tuple(scopes), opts, checkout, trees, config_committed=committed)
    fact("config", f"{config.path}{'' if committed else ' (not the committed file)'}; {scopes[-1].label} uses account "
                   f"{facts.account.id} in {facts.account.region}")
    if opts.skip_branch_check and checkout.branch and checkout.branch != environment.branch:
        console.warn(f"BRANCH CHECK OVERRIDDEN (--skip-branch-check): applying from {checkout.branch!r}, not "
                     f"{environment.branch!r}. The pipeline of {environment.branch!r} will not match what you apply.")
    dirty = checkout.changed_under([p for s in scopes for p in s.paths])
    if dirty:
        verb, run = ("PLANNED", "plan") if opts.read_only else ("APPLIED", "apply")
        console.warn(f"UNCOMMITTED CHANGES ARE NOT {verb}: {', '.join(dirty[:5])}{' ...' if len(dirty) > 5 else ''}: "
                     f"the {run} uses commit {checkout.head[:12]} as committed, never the working tree")
    remote = remote_head = None
    blocked = [found for s in scopes if (found := snapshot.leftovers(s, command)) is not None]
    if checkout.branch is not None and checkout.branch == facts.target_branch:
        cfg_origin = config.circleci.repository_origin if config.circleci else None
        repository = config.git_remote or (f"https://{cfg_origin}" if cfg_origin else None)
        try:
            remote = git.team_remote(facts.target_branch, repository, required=bool(config.git_remote))
            remote_head = git.remote_commit(facts.target_branch, fetch=not opts.dry_run, remote=remote.name)
        except RunbookError as exc:
            blocked.append(exc)
    compared = (f"; {remote.name}/{facts.target_branch} at {(remote_head or 'none')[:12]}"
                f"{' (as last fetched: no fetch in a dry run)' if opts.dry_run else ''}" if remote else "")
    on = f"branch {checkout.branch}" if checkout.branch else "detached HEAD"
    fact("git", f"{on} at {checkout.head[:12]}{compared}")
    snapshots, unpinned = {}, []
    if not blocked and all(trees.get(s.root) for s in scopes):
        for scope in scopes:  # a dry run takes it into a temporary folder, and shows the one a real run uses
            with tempfile.TemporaryDirectory(prefix="runbook-dry-") if opts.dry_run else nullcontext() as tmp:
                taken = snapshot.take(scope, checkout.head, scope.trees(trees), into=Path(tmp) if tmp else None)
                unpinned += [p for p in snapshot.unpinned_modules(taken, scope) if p not in unpinned]
            snapshots[scope.name] = snapshot.Snapshot.at(snapshot.folder(scope), scope)
        fact("snapshot", f"commit {checkout.head[:12]}: " + "; ".join(
            f"{s.label}: {', '.join(p for p, t in s.trees(trees).items() if t)}" for s in scopes))
    found = None
    if opts.dry_run:
        binary = shutil.which(versions.Terraform.binary)
        fact("terraform", f"{binary or 'not on PATH'}{'; its version is checked at run time' if binary else ''}")
    else:
        found = probe(config.required_version)
        fact("terraform", f"{versions.Terraform.name} {found.version} at {found.path}")
    return replace(facts, remote=remote, remote_head=remote_head, snapshots=snapshots, unpinned=tuple(unpinned),
                   blocked=tuple(blocked), terraform=found)


def examine_aws(facts: Facts, sess) -> Facts:
    """The facts AWS holds: the credentials of *sess* (the account's session from the standard chain) frozen for
    Terraform and for every other call of the run, and the caller identity they belong to; then, only when the
    identity is in the configured account, the backend (with the state objects of the run's scopes), the applied
    record of each scope, and when the backend is incomplete the signs of an earlier deploy. Raises RunbookError
    when a look-up fails."""
    account = facts.account
    credentials = aws.frozen_credentials(sess, account, purpose=f"environment {facts.environment.name}")
    sess = aws.session(account, credentials=credentials)  # every call of the run is made with the frozen keys
    identity = aws.caller_identity(sess, account)
    fact("identity", f"{identity.arn} in {identity.account_id} for {facts.environment.name}; Terraform runs with "
                     "exactly these credentials")
    facts = replace(facts, identity=identity, credentials=credentials, session=sess)
    if identity.account_id != account.id:
        return facts
    b = facts.backend
    state = backend.look(sess, account, b, [s.backend.key for s in facts.scopes if s.backend.bucket == b.bucket])
    ssm = aws.client(sess, "ssm", account)
    read = {s.name: records.read(ssm, s.parameter, s.name, s.account) for s in facts.scopes}
    lost = [s for s in facts.scopes if read[s.name] and state.bucket_exists and s.backend.key not in state.states]
    listed = bool(lost) or not state.complete  # the listings serve only a backend or a state that has gone, once
    digests = tuple(backend.digests(sess, account, b)) if listed and state.table_exists else ()
    objects = backend.objects(sess, account, b, limit=1000) if listed and state.bucket_exists else []
    fact("backend", f"bucket {b.bucket}: {'exists' if state.bucket_exists else 'absent'}"
                    + (f"; lock table {b.lock_table}: {state.table_status or 'absent'}" if b.uses_table else "")
                    + (f"; lacks {', '.join(state.missing)}" if state.missing else ""))
    return replace(facts, state=state, records=read, digests=digests,
                   evidence=earlier_deploys(facts, ssm, state, read, digests, objects),
                   hints={s.name: _state_hint(sess, facts, s, objects, digests) for s in lost})


def earlier_deploys(facts: Facts, ssm, state: backend.BackendState, read: Mapping[str, dict | None],
                    digests: tuple[str, ...], objects: list[str]) -> tuple[str, ...]:
    """The signs that IAM was deployed into the account before, when the backend (*state*) is incomplete: the
    applied records of the account's scopes (*read*: those already read), the lock table's state *digests*, the
    *objects* in the bucket. A backend is created only when there are none (a true first deploy)."""
    if state.complete:
        return ()
    account, b, evidence = facts.account, facts.backend, []
    for scope in account_scopes(facts.config, account):
        rec = read[scope.name] if scope.name in read else records.read(ssm, scope.parameter, scope.name, account)
        if rec:
            evidence.append(f"{scope.label} has an applied record ({scope.parameter}: commit "
                            f"{str(rec.get('commit', '?'))[:12]} at {rec.get('applied_at', '?')})")
    if digests:
        evidence.append(f"the lock table {b.lock_table} holds {len(digests)} state digest(s) ("
                        + ", ".join(f"s3://{console.one_line(d)}" for d in digests[:3])
                        + (", ..." if len(digests) > 3 else "") + "): Terraform wrote state through it")
    if objects:
        evidence.append(f"the bucket {b.bucket} holds state objects ({', '.join(map(console.one_line, objects[:3]))}"
                        + (", ..." if len(objects) > 3 else "") + ")")
    return tuple(evidence)


def _state_hint(sess, facts: Facts, scope: Scope, objects: list[str], digests: tuple[str, ...]) -> str:
    """How to bring back the state object of *scope*, which has a record but no state at the configured key: the
    delete marker that hides it, else the one object (of *objects*, the bucket's) or state digest (of *digests*,
    the lock table's) elsewhere that is probably it, else a backup."""
    b, account = scope.backend, scope.account
    target = f"s3://{b.bucket}/{b.key}"
    marker = backend.deleted_version(sess, account, b, b.key)
    if marker:
        return ("the state object was deleted and the bucket kept its versions: restore it with "
                + aws.aws_command(account, "s3api", "delete-object", "--bucket", b.bucket, "--key", b.key,
                                  "--version-id", marker))
    configured = {s.backend.key for s in account_scopes(facts.config, account) if s.backend.bucket == b.bucket}
    candidates = [f"s3://{b.bucket}/{k}" for k in objects if k not in configured and k.isprintable()]
    candidates += [f"s3://{d}" for d in digests if f"s3://{d}" not in candidates and f"s3://{d}" != target
                   and d.isprintable() and d.split("/", 1)[-1] not in configured]
    if candidates:
        return (f"the state of {scope.label} is probably {' or '.join(candidates[:5])}: copy the right one to the "
                "configured key, e.g. " + aws.aws_command(account, "s3", "cp", candidates[0], target)
                + "; or set the configuration back so that it names it")
    return ("restore the state from a backup: " + aws.aws_command(account, "s3", "cp", "BACKUP.tfstate", target)
            + f"; only if the IAM of {scope.label} is to be planned from nothing (import what exists), delete its "
            "record first: " + aws.aws_command(account, "ssm", "delete-parameter", "--name", scope.parameter))
