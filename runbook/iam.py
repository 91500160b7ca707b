"""The IAM steps of the runbook and the plans built from them.

``build(ctx)`` gives the ordered steps for one scope: "account" (the
account-specific root module) or "environment" (the environment-specific one):

1. preflight: configuration, git, Terraform, AWS caller identity;
2. backend: S3 state bucket and DynamoDB lock table, verified on every run
   (versioning, encryption, public access block, ``LockID`` key), created only on
   a true first deploy into the account (otherwise ``inv iam.bootstrap``);
3. state: the root module in Terraform's ``default`` workspace, and the state
   object at the configured key whenever the scope has an applied record;
4. plan (``deploy-app.sh`` in plan mode), confirmation where needed, apply of
   exactly that plan file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import console, fingerprint, git, records, terraform
from runbook.config import Account, Config, Environment, shown_path
from runbook.errors import RunbookError
from runbook.plan import Decision, Plan, Step
from runbook.scopes import ACCOUNT, Scope


class Worker:
    """One daemon thread that runs the calls submitted to it, in order, and hands back Futures.

    Like a one-thread ``ThreadPoolExecutor``, except that its thread is a daemon: a run that stops
    early (a failed preflight check, Ctrl-C) exits at once instead of waiting at interpreter exit for
    a look-up that hangs on an endpoint that does not answer.
    """

    def __init__(self, name: str):
        import queue

        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on the thread after what was submitted before; its Future holds the result."""
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args = self._calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to whoever asks for the result
                    future.set_exception(exc)


@dataclass
class IamRun:
    """Everything the IAM steps share.

    Args:
        config: the loaded configuration.
        scope: the :class:`~runbook.scopes.Scope` to apply.
        environment: the environment whose branch must be checked out (for the
            environment scope, the environment itself).
        dry_run: print and check only; no AWS or Terraform calls.
        assume_yes: answer confirmation prompts with yes (automation).
        skip_branch_check: apply from another branch (loudly).
        take_over: apply the account scope although its record came from another branch with
            another fingerprint (see :class:`TakeOverCheck`).
        cwd: the git checkout to check (default: the current directory).
        lock_timeout_s: seconds Terraform waits for a state lock held by another run (0: fail at once).
    """

    config: Config
    scope: Scope
    environment: Environment
    dry_run: bool = False
    assume_yes: bool = False
    skip_branch_check: bool = False
    take_over: bool = False
    cwd: Path | None = None
    lock_timeout_s: float = 0.0
    identity: Any = None
    credentials: Any = field(default=None, repr=False)
    remote: Any = None  # git.TeamRemote the branch was compared with (GitCheck)
    take_over_text: str = ""  # what TakeOverCheck found, for its run()
    terraform_bin: str | None = None
    terraform_version: str | None = None
    head: str | None = None
    branch: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)  # scope kind -> fingerprint when planned
    backend_pending: Any = None
    backend_found: Any = None
    plans: dict[str, terraform.PlanSummary] = field(default_factory=dict)  # scope kind -> its plan
    needed: dict[str, tuple[bool, str]] | None = None

    @property
    def account(self) -> Account:
        return self.scope.account

    @property
    def label(self) -> str:
        return self.scope.label

    @property
    def root(self) -> Path:
        return self.scope.root

    @property
    def backend(self):
        return self.scope.backend

    @property
    def command(self) -> str:
        """The command line that runs (or resumes) this run, with the flags the user gave."""
        return " ".join([self.scope.command(self.environment), *self.flags()])

    def flags(self) -> list[str]:
        """The user's flags that a resumed run must repeat (a dry run resumes as the real run)."""
        given = (("--yes", self.assume_yes), ("--skip-branch-check", self.skip_branch_check),
                 ("--take-over", self.take_over))
        return [flag for flag, on in given if on]

    def tf_vars(self) -> dict[str, str]:
        return self.scope.tf_vars()

    def scopes(self) -> list[Scope]:
        """The scopes this run may apply (one here; a release has two)."""
        return [self.scope]

    def aws_session(self):
        """The boto3 Session of the calling thread. Sessions are not thread-safe (boto3 guide, "Sessions":
        https://boto3.amazonaws.com/v1/documentation/api/latest/guide/session.html), so the background AWS
        worker and the main thread never share one. The first thread's session resolves the credential
        chain; any other thread's uses the keys the caller identity check froze, so every call of the run
        is made as the identity that was checked."""
        sessions = self.__dict__.setdefault("_sessions", {})
        me = threading.get_ident()
        if me not in sessions:
            from runbook import aws

            sessions[me] = aws.session(self.account, credentials=self.credentials if sessions else None)
        return sessions[me]

    def prefetch(self) -> None:
        """Start the slow read-only look-ups of a real run in the background.

        ``terraform version`` (a 90 MB binary starting), and on one AWS thread in
        this order: importing boto3 and STS GetCallerIdentity, then (only if the
        account is the right one) the backend's HeadBucket and DescribeTable. They
        overlap with the git checks and, when the backend is known to exist, with
        Terraform's plan (see :class:`BackendStep`); the steps take their results in
        order, so messages and failures still come in the order of the plan.
        Nothing here changes anything. The configuration check (:class:`ConfigCheck`: root modules inside
        the repository, deploy scripts with LF endings) comes first, so its findings stop the run
        before any AWS or Terraform call.
        """
        ConfigCheck().check(self)

        aws_worker = Worker("preflight-aws")
        identity = aws_worker.submit(self._look_up_identity)
        self._futures = {
            "terraform": Worker("preflight-terraform").submit(terraform.find, self.config.required_version),
            "identity": identity,
            "backend": aws_worker.submit(self._look_up_backend, identity),
        }
        self._aws_pool = aws_worker  # its own Session (aws_session): a Session is not thread-safe

    def _look_up_identity(self):
        """Freeze the session's credentials, then ask STS with exactly those keys: the identity
        returned is the identity of ``self.credentials``, which Terraform gets (ScriptStep.env)."""
        from runbook import aws

        credentials = aws.frozen_credentials(self.aws_session(), self.account, purpose=self.label)
        identity = aws.caller_identity(self.aws_session(), self.account, purpose=self.label, credentials=credentials)
        self.credentials = credentials
        return identity

    def _look_up_backend(self, identity=None):
        """BackendState, or the RunbookError that stopped the look-up; None when the identity failed."""
        from runbook import aws

        if identity is not None and identity.exception() is not None:
            return None  # never look around in an account the credentials are not for
        try:
            state = aws.backend_state(self.aws_session(), self.account, self.backend, self.state_keys())
        except RunbookError as exc:
            return exc
        self._read_records_without_state(state)
        return state

    def _read_records_without_state(self, state) -> None:
        """On the AWS thread, right after the look-up: the applied record of each scope whose state object is
        missing, which the state check then needs (one SSM GetParameter each, while git or Terraform runs
        rather than after). Only in a run of one scope: ``inv release`` reads its records in a step of its own.
        A failure is left for the state check, which reads again and reports it."""
        from runbook import aws

        if len(self.scopes()) != 1 or all(state.states.values()):
            return
        known = self.__dict__.setdefault("_records", {})
        todo = [s for s in self.scopes() if state.states.get(s.backend.key) is False and s.record_scope not in known]
        try:
            if todo and getattr(self, "_ssm", None) is None:
                self._ssm = aws.client(self.aws_session(), "ssm", self.account)
            for scope in todo:
                self.applied_record(scope)
        except RunbookError:
            return

    def state_keys(self) -> list[str]:
        """The state object keys of :meth:`scopes` that live in this run's state bucket."""
        return [s.backend.key for s in self.scopes() if s.backend.bucket == self.backend.bucket]

    def prefetch_ssm(self) -> None:
        """Build the SSM client for the record in the background while Terraform runs (it costs ~0.05 s
        of CPU that would otherwise come after the apply)."""
        from runbook import aws

        pool = getattr(self, "_aws_pool", None)
        if pool is None or "ssm" in self._futures or getattr(self, "_ssm", None) is not None:
            return
        self._futures["ssm"] = pool.submit(
            lambda: getattr(self, "_ssm", None) or aws.client(self.aws_session(), "ssm", self.account))

    def fetched(self, name: str, compute):
        """The prefetched result *name*, or ``compute()`` when nothing was prefetched."""
        future = getattr(self, "_futures", {}).pop(name, None)
        return future.result() if future is not None else compute()

    def ssm_client(self):
        """The SSM client of the run's account, built once per run (prefetched while Terraform plans)."""
        if getattr(self, "_ssm", None) is None:
            from runbook import aws

            self._ssm = self.fetched("ssm", lambda: aws.client(self.aws_session(), "ssm", self.account))
        return self._ssm

    def applied_record(self, scope: Scope) -> dict | None:
        """*scope*'s applied record (``records.read``: a dict, or None when never applied), read at most
        once per run; :meth:`remember_record` stores one read elsewhere (``inv release`` reads both scopes
        first). Raises RunbookError as ``records.read`` does."""
        known = self.__dict__.setdefault("_records", {})
        if scope.record_scope not in known:
            known[scope.record_scope] = records.read(self.ssm_client(), scope.config.project, scope.record_scope,
                                                     endpoint_url=scope.account.endpoint_url,
                                                     profile=scope.account.profile)
        return known[scope.record_scope]

    def remember_record(self, scope: Scope, record: dict | None) -> None:
        """Keep a record read by another look-up, so :meth:`applied_record` does not read it again."""
        self.__dict__.setdefault("_records", {})[scope.record_scope] = record


class ConfigCheck(Step):
    title = "Preflight: configuration"
    preflight = True

    def check(self, ctx: IamRun) -> Decision:
        from runbook.config import PROJECT_ROOT, check_roots

        done = ctx.__dict__.get("_config_checked")
        if done is not None:
            return done  # IamRun.prefetch ran it first, before any AWS or Terraform call: once per run
        check_roots(ctx.config)
        for scope in ctx.scopes():
            # before anything changes: scripts bash can run, and nothing read from outside the repository
            fingerprint.check_line_endings(scope.scripts(), top=PROJECT_ROOT)
            scope.fingerprint()
        note = _uncommitted_config(ctx)
        ctx._config_checked = Decision(True, f"{ctx.config.path} is valid; {ctx.label} uses account "
                                             f"{ctx.account.id} in {ctx.account.region}{note}")
        return ctx._config_checked


def _uncommitted_config(ctx: IamRun) -> str:
    """Refuse a configuration file that is not part of the commit (``RUNBOOK_CONFIG`` pointing outside the
    repository, or at a file git does not track) for an apply to a real AWS account: the record claims the
    commit, and the pipeline's gate reads the committed configuration (its roots, backend, inputs). A
    rehearsal, where every account this run touches has ``endpoint_url`` (a local AWS), may use one: that is
    how docs/RUNBOOK.md rehearses. Returns a note for the step's line; raises RunbookError otherwise."""
    from runbook.config import DEFAULT_CONFIG, PROJECT_ROOT

    path = ctx.config.path.resolve()
    if path.is_relative_to(PROJECT_ROOT):
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        if rel in git.head_entries([rel], cwd=PROJECT_ROOT):
            return ""  # committed: the git check makes sure it is unchanged
    real = sorted({scope.account.name for scope in ctx.scopes() if not scope.account.endpoint_url})
    if not real:
        return " (a configuration outside the commit, allowed for a rehearsal against a local AWS)"
    raise RunbookError(
        f"The configuration {ctx.config.path} is not part of this commit (RUNBOOK_CONFIG points outside the "
        f"repository, or at a file git does not track), but this run applies to AWS account(s) "
        f"{', '.join(real)}: the record would claim this commit while the pipeline's gate reads the committed "
        "configuration; nothing was changed",
        id="config-not-committed",
        where=f"RUNBOOK_CONFIG={ctx.config.path}",
        fix=f"unset RUNBOOK_CONFIG to use the committed {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}, or commit the "
        "change to it and merge it into the environment's branch",
    )



def refuse_leftovers(ctx: IamRun) -> None:
    """Raise the advice of :func:`terraform.leftovers` when a failed run left errored.tfstate or crash.log in a
    root module: before the git checks, whose "commit or stash" would hide the only copy of a new state."""
    for scope in ctx.scopes():
        found = terraform.leftovers(scope.root, command=ctx.command, profile=scope.account.profile)
        if found:
            raise found


class GitCheck(Step):
    title = "Preflight: git"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        b = shlex.quote(ctx.environment.branch)
        fetch = "(dry run: compared with the last fetch, no network)" if ctx.dry_run else ""
        name = shlex.quote(ctx.remote.name) if ctx.remote else "<the team's remote>"
        return [f"$ git rev-parse --abbrev-ref HEAD; git status --porcelain; git fetch {name} {b} {fetch}".rstrip(),
                "$ git ls-tree -r HEAD -- <every file the fingerprint hashes>   (each must be HEAD's version)"]

    def check(self, ctx: IamRun) -> Decision:
        refuse_leftovers(ctx)
        branch = ctx.environment.branch
        checkout = git.inspect(ctx.cwd)
        ctx.head, ctx.branch = checkout.head, checkout.branch
        where = str(ctx.cwd or Path.cwd())
        if checkout.detached:
            skip = " (--skip-branch-check needs a branch: a detached HEAD has none to compare with the team's)"
            raise RunbookError(
                f"HEAD is detached at {checkout.head[:12]}, but {ctx.label} is deployed from branch {branch!r}: "
                f"the IAM must be applied from the branch being deployed{skip if ctx.skip_branch_check else ''}",
                id="wrong-branch",
                where=where,
                fix=f"git checkout {shlex.quote(branch)} && git pull --ff-only",
            )
        if checkout.branch != branch:
            if not ctx.skip_branch_check:
                raise RunbookError(
                    f"The checkout is on branch {checkout.branch!r}, but {ctx.label} is deployed from "
                    f"{branch!r}: the IAM must be applied from the branch being deployed",
                    id="wrong-branch",
                    where=where,
                    fix=f"git checkout {shlex.quote(branch)} && git pull --ff-only",
                )
            console.warn(f"BRANCH CHECK OVERRIDDEN (--skip-branch-check): applying from {checkout.branch!r}, "
                         f"not {branch!r}. The pipeline of {branch!r} will not match what you apply.")
        if not checkout.clean:
            shown = ", ".join(c[3:] for c in checkout.changes[:5])
            more = f" and {len(checkout.changes) - 5} more" if len(checkout.changes) > 5 else ""
            raise RunbookError(
                f"The working tree has uncommitted changes ({shown}{more}); what is applied must be "
                "exactly what is committed",
                id="uncommitted-changes",
                where=where,
                fix="commit or stash them (git stash --include-untracked), then run again",
            )
        hashed = refuse_files_unlike_head(ctx)
        target = checkout.branch if ctx.skip_branch_check else branch
        cfg = ctx.config
        origin = cfg.circleci.repository_origin if cfg.circleci else None  # "github.com/acme/acme-api"
        repository = cfg.git_remote or (f"https://{origin}" if origin else None)
        ctx.remote = team = git.team_remote(target, repository, required=bool(cfg.git_remote), cwd=ctx.cwd)
        ours = f"{team.name}/{target}"
        remote = git.remote_commit(target, fetch=not ctx.dry_run, cwd=ctx.cwd, remote=team.name)
        if remote is None:
            raise RunbookError(
                f"There is no {ours} (remote {team.name}: {team.why}): the branch was never pushed or fetched",
                id="head-not-on-remote",
                fix=(f"git push -u {shlex.quote(team.name)} {shlex.quote(target)}" if not ctx.dry_run
                     else f"git fetch {shlex.quote(team.name)} {shlex.quote(target)}"),
            )
        if remote != checkout.head:
            raise RunbookError(
                f"HEAD is {checkout.head[:12]} but {ours} is {remote[:12]} (remote {team.name}: {team.why}): the "
                "local branch is not what was merged",
                id="head-not-on-remote",
                fix=f"git pull --ff-only {shlex.quote(team.name)} {shlex.quote(target)}  (or push your commits to "
                f"{team.name} first if you "
                "are ahead)",
            )
        return Decision(True, f"on {target} at {checkout.head[:12]}, clean ({hashed} hashed files are HEAD's), "
                              f"equal to {ours} (remote {team.name}: {team.why})")


def refuse_files_unlike_head(ctx: IamRun) -> int:
    """Refuse the run unless every file the fingerprint of each scope hashes (root module files, local
    modules, files read by ``file()`` and the like, deploy scripts) is exactly HEAD's version, compared
    after the fingerprint's line-ending normalisation (a ``core.autocrlf=true`` checkout passes). Git's
    own view is not trusted: an ignored file, a skip-worktree or assume-unchanged entry and an edited
    submodule are all invisible to ``git status``. A symbolic link on the way to a hashed file must be
    HEAD's link too (an ignored link to a tracked file would add that file to the apply). One
    ``git ls-tree`` call, and one ``git cat-file
    --batch`` call only when a file's bytes differ from HEAD's blob.

    Returns how many files were compared. Raises RunbookError (``untracked-files``: a file not in HEAD;
    ``uncommitted-changes``: a file unlike HEAD's; ``reference-leaves-repository``: a file inside a git
    submodule or another repository), naming up to 5 paths and the fix.
    """
    from runbook.config import PROJECT_ROOT

    top = os.path.realpath(PROJECT_ROOT)
    paths: dict[str, str] = {}  # repository-relative POSIX path (links resolved) -> real path
    links: dict[str, str] = {}  # repository-relative POSIX path of a symbolic link on the way -> its path
    for scope in ctx.scopes():
        for path in fingerprint.hashed_files(scope.root, scope.scripts(), top=PROJECT_ROOT):
            real = os.path.realpath(path)
            paths.setdefault(Path(os.path.relpath(real, top)).as_posix(), real)
            if real != path:  # the link itself must be HEAD's too, or an ignored link could add a file
                parts = Path(os.path.relpath(path, top)).parts
                for i in range(1, len(parts) + 1):
                    if os.path.islink(os.path.join(top, *parts[:i])):
                        links.setdefault("/".join(parts[:i]), os.path.join(top, *parts[:i]))
    entries = git.head_entries(sorted({rel.rpartition("/")[0] or "." for rel in (*paths, *links)}), top)
    oid_length = len(next(iter(entries.values()))[2]) if entries else 40
    missing, nested, candidates = [], {}, {}
    for rel, link in sorted(links.items()):
        entry = entries.get(rel)
        if entry is None or entry[0] != "120000":
            missing.append(rel)
        elif git.blob_id(os.fsencode(os.readlink(link)), oid_length) != entry[2]:
            candidates[rel] = (entry[2], os.fsencode(os.readlink(link)))
    for rel, real in sorted(paths.items()):
        entry = entries.get(rel)
        if entry is None or entry[1] != "blob":
            parents = [rel[:i] for i in range(len(rel)) if rel[i] == "/"]
            outer = next((p for p in parents if entries.get(p, ("", ""))[1] == "commit"
                          or os.path.exists(os.path.join(top, p, ".git"))), None)
            if outer:
                nested.setdefault(outer, rel)
            else:
                missing.append(rel)
            continue
        with open(real, "rb") as handle:
            content = handle.read()
        if git.blob_id(content, oid_length) != entry[2]:
            candidates[rel] = (entry[2], content)
    if nested:
        outer, rel = next(iter(nested.items()))
        raise RunbookError(
            f"{rel} lies in {outer}, a git submodule (or another repository): its files are not in this "
            "repository's commit, so the applied record could not prove what is applied",
            id="reference-leaves-repository",
            where=outer,
            fix=f"copy the module into this repository and commit it: git rm {shlex.quote(outer)} && "
                f"git clone <its repository> {shlex.quote(outer)} && rm -rf {shlex.quote(outer + '/.git')} && "
                f"git add {shlex.quote(outer)} && git commit",
        )
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        quoted = " ".join(shlex.quote(r) for r in missing[:5])
        raise RunbookError(
            f"Terraform would read files git does not track in HEAD ({shown}): ignored (.gitignore, "
            ".git/info/exclude, a global excludes file) or never added, so they are not in the commit the "
            "record names and the pipeline deploys",
            id="untracked-files",
            where=missing[0],
            fix=f"delete them (rm {quoted}), or commit them (git add -f {quoted} && git commit)",
        )
    blobs = git.blob_contents(sorted({oid for oid, _ in candidates.values()}), top)
    differing = [rel for rel, (oid, content) in sorted(candidates.items())
                 if fingerprint.normalise(blobs[oid]) != fingerprint.normalise(content)]
    if differing:
        shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        quoted = " ".join(shlex.quote(r) for r in differing[:5])
        raise RunbookError(
            f"Files Terraform would read differ from HEAD's version ({shown}), although git status may not "
            "show it (skip-worktree, assume-unchanged): what is applied must be exactly what is committed",
            id="uncommitted-changes",
            where=differing[0],
            fix=f"git update-index --no-skip-worktree --no-assume-unchanged {quoted} && git status  (then commit "
                f"or stash the change, or restore HEAD's version: git checkout -- {quoted})",
        )
    return len(paths)



class TerraformCheck(Step):
    title = "Preflight: Terraform"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        return [f"$ terraform version -json   (must satisfy {ctx.config.required_version!r})"]

    def check(self, ctx: IamRun) -> Decision:
        if ctx.dry_run:
            found = shutil.which("terraform")
            if not found:
                raise RunbookError("terraform is not on PATH", id="terraform-missing", fix=terraform.INSTALL_HINT)
            return Decision(True, f"found {found}; its version is checked at run time")
        ctx.terraform_bin, version = ctx.fetched("terraform", lambda: terraform.find(ctx.config.required_version))
        ctx.terraform_version = version
        for sc in ctx.scopes():
            terraform.check_lock_mode(version, sc.backend, binary=ctx.terraform_bin)
        lock = "; locks the state with S3 lock files (1.10+)" if ctx.backend.uses_lockfile else ""
        return Decision(True, f"Terraform {version} at {ctx.terraform_bin}{lock}")



class IdentityCheck(Step):
    title = "Preflight: AWS caller identity"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        via = f", endpoint {ctx.account.endpoint_url}" if ctx.account.endpoint_url else ""
        profile = f", profile {ctx.account.profile}" if ctx.account.profile else ""
        return [f"STS GetCallerIdentity (region {ctx.account.region}{profile}{via}): "
                f"must be account {ctx.account.id}"]

    def check(self, ctx: IamRun) -> Decision:
        _warn_other_credentials(ctx)
        if ctx.dry_run:
            return Decision(True, "checked at run time (not called in a dry run); Terraform then runs with "
                                  "exactly the credentials that pass it")
        ctx.identity = ctx.fetched("identity", ctx._look_up_identity)
        return Decision(True, f"{ctx.identity.arn} in {ctx.identity.account_id} for {ctx.environment.name}; "
                              "Terraform runs with exactly these credentials")



def _warn_other_credentials(ctx: IamRun) -> None:
    """Say so when the shell exports credentials that the configured profile overrides."""

    profile = ctx.account.profile
    if not profile:
        return
    exported = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE") if os.environ.get(name)
                and not (name == "AWS_PROFILE" and os.environ[name] == profile)]
    if exported:
        console.warn(f"accounts.{ctx.account.name}.profile is {profile!r} and {' and '.join(exported)} "
                     f"{'is' if len(exported) == 1 else 'are'} exported: the runbook uses profile {profile!r} for "
                     "the caller identity check and hands Terraform exactly those credentials; the exported "
                     f"{'ones are' if len(exported) > 1 else 'one is'} not used (unset it to silence this).")


class BackendStep(Step):
    title = "Backend: state bucket and lock table"

    def describe(self, ctx: IamRun) -> list[str]:
        b = ctx.backend
        lock = (f"DynamoDB lock table {b.lock_table} (hash key LockID, string)" if b.uses_table else
                f"state lock: S3 lock file s3://{b.bucket}/{b.lock_object} (use_lockfile; no DynamoDB table)")
        return [f"S3 bucket {b.bucket} (versioned, encrypted, public access blocked), key {b.key}", lock]

    def check(self, ctx: IamRun) -> Decision:
        if ctx.dry_run:
            return Decision(True, "verified at run time (versioning, encryption, public access block, lock table "
                                  "keyed LockID); created only on a true first deploy into the account, otherwise "
                                  f"`{bootstrap_command(ctx)}`")
        b = ctx.backend
        if ctx.needed is not None and not any(needed for needed, _ in ctx.needed.values()):
            return Decision(False, "no IAM step is needed, so the backend is not used")
        seen = _backend_seen(ctx)
        if seen and "backend" in getattr(ctx, "_futures", {}):
            # Seen and verified on an earlier run: let Terraform start; PlanStep takes the look-up's answer after
            # the plan (_confirm_backend) and nothing is applied unless it verifies the backend and the state.
            ctx.backend_pending = ctx._futures.pop("backend")
            parts = f"bucket {b.bucket} and table {b.lock_table}" if b.uses_table else f"bucket {b.bucket}"
            return Decision(False, f"{parts} verified on {seen}; looked up again while Terraform plans, and nothing "
                                   "is applied unless they still verify")
        state = ctx.fetched("backend", ctx._look_up_backend)
        if isinstance(state, RunbookError):
            raise state
        return _decide_backend(ctx, state)

    def run(self, ctx: IamRun) -> str:
        from runbook import aws

        state, sess, b = ctx.backend_found, ctx.aws_session(), ctx.backend
        done = []
        if not state.complete or not state.table_ready:
            done += aws.create_backend(sess, ctx.account, b, state)
        if state.bucket_exists and state.missing:
            repaired = aws.repair_bucket(sess, ctx.account, b, state.missing)
            done.append(f"the state bucket {b.bucket} lacked {', '.join(repaired)}: repaired (switched on)")
        after = aws.backend_state(sess, ctx.account, b, ctx.state_keys())
        _refuse_unverified(ctx, after)
        ctx.backend_found = after
        return "; ".join(done)


def _backend_words(b) -> str:
    """What the backend *b* is made of, as a sentence: "bucket B and table T exist" or "bucket B exists (...)"."""
    if b.uses_table:
        return f"bucket {b.bucket} and table {b.lock_table} exist"
    return f"bucket {b.bucket} exists (state locked with S3 lock files, no lock table)"


def _missing_parts(b, state, *, bucket: str = "bucket", table: str = "lock table") -> list[str]:
    """The parts of backend *b* that *state* did not find: *bucket* and/or *table* (the table only where used)."""
    return [n for n, ok in ((bucket, state.bucket_exists), (table, state.table_exists or not state.table_needed))
            if not ok]


def bootstrap_command(ctx: IamRun) -> str:
    """The command that creates (or repairs) this run's backend explicitly."""
    return f"inv iam.bootstrap --env {shlex.quote(ctx.environment.name)}"


def account_scopes(config: Config, account: Account) -> list[Scope]:
    """Every scope whose state and record live in *account*'s AWS account (same ID and endpoint):
    the account scope and each environment deployed there."""
    same = [e for e in config.environments.values()
            if e.account.id == account.id and e.account.endpoint_url == account.endpoint_url]
    return [Scope.of_account(config, account)] + [Scope.of_environment(config, e) for e in same]


def _decide_backend(ctx: IamRun, state) -> Decision:
    """Whether the backend found by the look-up is usable as it is, must be repaired or waited for, may be
    created (a true first deploy), or must be refused. Sets ``ctx.backend_found``."""
    b = ctx.backend
    ctx.backend_found = state
    _refuse_wrong_lock_table(ctx, state)
    if state.verified:
        table = "; lock table keyed LockID" if b.uses_table else ""
        return Decision(False, f"{_backend_words(b)} (verified: versioned, encrypted, public access blocked{table})")
    if not state.complete:
        evidence, digests = _earlier_deploys(ctx, state)
        if evidence:
            raise _not_a_first_deploy(ctx, state, evidence, digests)
        missing = _missing_parts(b, state)
        return Decision(True, f"first deploy into account {ctx.account.id} (no applied record, no state digest, "
                              f"no state): the {' and '.join(missing)} must be created")
    todo = []
    if state.missing:
        todo.append(f"the bucket lacks {', '.join(state.missing)}: switch it on")
    if not state.table_ready:
        todo.append(f"the lock table is {state.table_status} (another run is creating it): wait for it")
    return Decision(True, "; ".join(todo))


def _refuse_wrong_lock_table(ctx: IamRun, state) -> None:
    from runbook import aws

    if state.key_schema_ok:
        return
    b = ctx.backend
    raise RunbookError(
        f"The DynamoDB table {b.lock_table} is keyed {state.table_key}, but Terraform's S3 backend locks state "
        "in a table whose hash key is LockID (string): Terraform could not lock the state; nothing was applied",
        id="lock-table-wrong-key",
        where="config field terraform.backend.lock_table",
        fix="point terraform.backend.lock_table at another name and create that table with "
        f"`{bootstrap_command(ctx)}`; or, only if nothing else uses the table: "
        + aws.aws_command(ctx.account, "dynamodb", "delete-table", "--table-name", b.lock_table)
        + f" then {bootstrap_command(ctx)}",
    )


def _refuse_unverified(ctx: IamRun, state) -> None:
    """Raise unless *state* (looked up again after creating or repairing) is complete and verified."""
    _refuse_wrong_lock_table(ctx, state)
    if state.verified:
        return
    gaps = _missing_parts(ctx.backend, state, bucket=f"S3 bucket {ctx.backend.bucket}",
                          table=f"DynamoDB table {ctx.backend.lock_table}")
    gaps += [f"the bucket's {name}" for name in state.missing]
    if state.table_exists and not state.table_ready:
        gaps.append(f"the lock table is {state.table_status}")
    raise RunbookError(
        f"The Terraform backend is still not complete after creating it ({', '.join(gaps)}); nothing was planned "
        "or applied",
        id="backend-incomplete",
        fix=f"see what is missing and why: {bootstrap_command(ctx)} --dry-run",
    )


def _earlier_deploys(ctx: IamRun, state) -> tuple[list[str], list[str]]:
    """Signs that IAM was deployed into this account before (so creating a backend is no first deploy):
    applied records of the account's scopes, state digests in the lock table, objects in the bucket.
    Returns (the signs as sentences, the digests' ``bucket/key`` names)."""
    from runbook import aws

    found = []
    for scope in account_scopes(ctx.config, ctx.account):
        rec = ctx.applied_record(scope)
        if rec:
            found.append(f"{scope.label} has an applied record ({scope.parameter}: commit "
                         f"{str(rec.get('commit', '?'))[:12]} at {rec.get('applied_at', '?')})")
    sess, b = ctx.aws_session(), ctx.backend
    digests = aws.state_digests(sess, ctx.account, b) if state.table_exists else []
    if digests:
        found.append(f"the lock table {b.lock_table} holds {len(digests)} state digest(s) ("
                     + ", ".join(f"s3://{_printable(d)}" for d in digests[:3]) + (", ..." if len(digests) > 3 else "")
                     + "): Terraform wrote state through it")
    if state.bucket_exists:
        objects = aws.state_objects(sess, ctx.account, b, limit=4)
        if objects:
            found.append(f"the bucket {b.bucket} holds state objects ({', '.join(map(_printable, objects[:3]))}"
                         + (", ..." if len(objects) > 3 else "") + ")")
    return found, digests


def _printable(text: str) -> str:
    """*text* (an S3 key or a lock ID: from outside) with every non-printable character shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _not_a_first_deploy(ctx: IamRun, state, evidence: list[str], digests: list[str]) -> RunbookError:
    b = ctx.backend
    gone = _missing_parts(b, state, bucket=f"the S3 bucket {b.bucket}", table=f"the DynamoDB lock table {b.lock_table}")
    elsewhere = sorted({d.split("/", 1)[0] for d in digests} - {b.bucket})
    if elsewhere and not state.bucket_exists:
        hint = (f"if terraform.backend.state_bucket was changed or mistyped (the lock table knows state in "
                f"{', '.join(elsewhere)}), set it back in {shown_path()}; ")
    else:
        hint = f"if a name under terraform.backend in {shown_path()} was changed or mistyped, set it back; "
    return RunbookError(
        f"{' and '.join(gone)[0].upper()}{' and '.join(gone)[1:]} of account {ctx.account.name} ({ctx.account.id}) "
        f"{'do' if len(gone) > 1 else 'does'} not exist, but "
        "this is not a first deploy into the account: " + "; ".join(evidence) + ". Creating the backend now would "
        "plan from an empty state (Terraform would try to create IAM that exists) and hide where the state went; "
        "nothing was created, planned or applied",
        id="backend-missing",
        where="config fields terraform.backend.state_bucket and terraform.backend.lock_table",
        fix=hint + "if it was deleted, restore it; to create it deliberately, see what would be created and why, "
        f"then create it: {bootstrap_command(ctx)} --dry-run, then {bootstrap_command(ctx)}",
    )


def _backend_key(ctx: IamRun, key: str) -> str:
    b = ctx.backend
    return "|".join([ctx.account.endpoint_url or "aws", ctx.account.id, b.region, b.bucket,
                     b.lock_table if b.lock == "dynamodb" else f"{b.lock_table}+{b.lock}", key])


def _needed_keys(ctx: IamRun) -> list[str]:
    """The state keys of the scopes this run may apply (``inv release`` skips the scopes that are current)."""
    needed = ctx.needed or {}
    return [s.backend.key for s in ctx.scopes()
            if s.backend.bucket == ctx.backend.bucket and needed.get(s.kind, (True, ""))[0]]


def _backend_seen(ctx: IamRun) -> str | None:
    """When every state key this run may apply to was verified on an earlier run: the oldest time; else None."""
    from runbook import cache

    seen = [cache.get("backend-seen", _backend_key(ctx, key)) for key in _needed_keys(ctx)]
    return min(seen) if seen and all(seen) else None


def _remember_backend(ctx: IamRun, key: str) -> None:
    import time

    from runbook import cache

    cache.put("backend-seen", _backend_key(ctx, key), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _forget_backend(ctx: IamRun) -> None:
    from runbook import cache

    for key in ctx.state_keys():
        cache.put("backend-seen", _backend_key(ctx, key), None)


def _confirm_backend(ctx: IamRun) -> None:
    """Take the background look-up's answer after a plan that started before it (see BackendStep).

    Raises (so that nothing is applied) when the backend has gone, the lock table has the wrong key,
    a missing protection cannot be repaired, or a deferred state check fails; repairs what it may
    and says so.
    """
    from runbook import aws

    pending = getattr(ctx, "backend_pending", None)
    if pending is None:
        return
    ctx.backend_pending = None
    state = pending.result()
    if isinstance(state, RunbookError):
        _forget_backend(ctx)
        raise state
    if state is None:
        return
    b = ctx.backend
    if not state.verified:
        _forget_backend(ctx)
    if not state.complete:
        gone = _missing_parts(b, state, bucket=f"S3 bucket {b.bucket}", table=f"DynamoDB table {b.lock_table}")
        empty = " (the state lived in the bucket)" if not state.bucket_exists else ""
        raise RunbookError(
            f"The Terraform backend has gone: {' and '.join(gone)} existed on an earlier run but not now{empty}; "
            "nothing was applied",
            id="backend-gone",
            fix=(f"if the local AWS at {ctx.account.endpoint_url} was restarted, it is empty and this is expected: "
                 "run the same command again (it finds a first deploy and creates the backend); otherwise "
                 if ctx.account.endpoint_url else "")
            + "find out who deleted it and restore it; to create it afresh deliberately, see what would be "
            f"created and why: {bootstrap_command(ctx)} --dry-run, then {bootstrap_command(ctx)}",
        )
    _refuse_wrong_lock_table(ctx, state)
    if not state.table_ready:
        aws.wait_for_table(ctx.aws_session(), ctx.account, b)
    if state.missing:
        repaired = aws.repair_bucket(ctx.aws_session(), ctx.account, b, state.missing)
        console.warn(f"The state bucket {b.bucket} lacked {', '.join(repaired)}: repaired (switched on) before any "
                     "apply.")
    ctx.backend_found = state
    try:
        for scope in getattr(ctx, "_deferred_states", []):
            _check_state(ctx, scope, state, planned=True)
    except RunbookError:
        _forget_backend(ctx)  # the next run looks before it plans
        raise
    ctx._deferred_states = []


class ScopedStep(Step):
    """A step that acts on one scope: its own (release runs account then environment) or ``ctx.scope``.

    When ``ctx.needed`` holds a decision for the scope (``inv release`` reads the applied records
    first), a scope whose record is current is skipped with that reason.
    """

    def __init__(self, scope: Scope | None = None):
        self.scope = scope
        if scope is not None:
            self.title = f"{self.title} ({scope.label})"

    def sc(self, ctx: IamRun) -> Scope:
        return self.scope or ctx.scope

    def skip(self, ctx: IamRun) -> Decision | None:
        """Decision(False, why) when the records say this scope needs nothing, else None."""
        needed = getattr(ctx, "needed", None)
        if needed is None or self.sc(ctx).kind not in needed:
            return None
        is_needed, reason = needed[self.sc(ctx).kind]
        return None if is_needed else Decision(False, reason)

    def because(self, ctx: IamRun) -> str:
        """What the records say about this scope ("change pending: "), or "" when they were not read."""
        needed = getattr(ctx, "needed", None) or {}
        entry = needed.get(self.sc(ctx).kind)
        return f"{entry[1]}: " if entry and entry[0] else ""


class TakeOverCheck(ScopedStep):
    """The account scope is shared by every environment of the account (``dev``, ``stg`` and ``test``
    share one): applying it from one branch replaces what another branch applied. When the account
    record came from another branch and holds another fingerprint, the step shows who applied what,
    from which branch and when, and goes on only with ``--take-over`` or a typed yes at a terminal.

    ``--yes`` never answers it: ``--yes`` answers routine confirmations in automation, and silently
    reverting another branch's account IAM is never routine, so automation must say ``--take-over``.
    The record is read once per run (:meth:`IamRun.applied_record`; ``inv release`` read it already).
    """

    title = "Preflight: shared account scope"
    # Not a `preflight` step: its run() asks at a terminal (or announces --take-over) after check() decided.

    def describe(self, ctx: IamRun) -> list[str]:
        sc = self.sc(ctx)
        return [f"SSM GetParameter {sc.parameter}: applied from another branch with another fingerprint needs "
                "--take-over (or a typed yes at a terminal; --yes does not answer it)"]

    def check(self, ctx: IamRun) -> Decision:
        sc = self.sc(ctx)
        skipped = self.skip(ctx)
        if skipped:
            return skipped
        if ctx.dry_run and sc.record_scope not in getattr(ctx, "_records", {}):
            return Decision(True, "the account record is read at run time (not in a dry run)")
        if not ctx.dry_run:
            ctx.prefetch_ssm()  # the SSM client is built on the AWS thread: a boto3 Session is not thread-safe
        applied = ctx.applied_record(sc)
        branch = ctx.branch or ctx.environment.branch
        if applied is None:
            return Decision(False, "never applied: no other branch's account IAM is replaced")
        if applied.get("branch") == branch:
            return Decision(False, f"last applied from this branch, {branch!r}")
        ours = sc.fingerprint()
        if applied.get("fingerprint") == ours:
            return Decision(False, f"last applied from {_outside(applied.get('branch'))!r} with the same fingerprint "
                                   "as this commit: nothing of theirs is replaced")
        ctx.take_over_text = text = _take_over_text(ctx, sc, applied, ours, branch)
        if ctx.take_over:
            return Decision(True, "--take-over given: " + text)
        if ctx.assume_yes or not sys.stdin or not sys.stdin.isatty():
            raise RunbookError(
                text + ("; --yes does not answer this" if ctx.assume_yes else "") + "; nothing was changed",
                id="take-over-needed",
                where=f"SSM parameter {sc.parameter}",
                fix=f"agree with whoever applied from {_outside(applied.get('branch'))!r} first (or merge it into "
                f"{branch!r}), then: {ctx.command} --take-over",
            )
        return Decision(True, text)

    def run(self, ctx: IamRun) -> str:
        text = ctx.take_over_text
        if ctx.take_over:
            console.warn(f"TAKING OVER the shared account scope (--take-over): {text}")
            return "taken over (--take-over)"
        console.warn(text)
        if not console.confirm("Take over the account scope and replace that IAM?"):
            raise RunbookError("Not taken over: nothing was changed", id="not-confirmed",
                               fix=f"{ctx.command} --take-over, once whoever applied it agrees")
        return "taken over (answered yes)"


def _take_over_text(ctx: IamRun, sc: Scope, applied: dict, ours: str, branch: str) -> str:
    """Who applied the shared account scope, what, from which branch and when (record values printed safely)."""
    sharing = [e.name for e in ctx.config.environments.values() if e.account == sc.account]
    return (f"The account scope {sc.label} is shared by {', '.join(sharing)}. It was last applied from branch "
            f"{_outside(applied.get('branch'))!r} (commit {_outside(applied.get('commit'))[:12]}, fingerprint "
            f"{_outside(applied.get('fingerprint'))[:12]}) by {_outside(applied.get('applied_by'))} at "
            f"{_outside(applied.get('applied_at'))}. This commit on {branch!r} has another fingerprint "
            f"({ours[:12]}): applying it replaces that account IAM, reverting whatever it has that this commit "
            "lacks")


def _outside(value: Any, limit: int = 200) -> str:
    """A value read from outside (an applied record) made safe to print: printable characters only
    (terminal escapes and control characters dropped), at most *limit* characters."""
    return "".join(ch for ch in str(value if value is not None else "?") if ch.isprintable())[:limit]


class StateStep(ScopedStep):
    """The state this scope's apply goes to: Terraform's ``default`` workspace, and the state object at the
    configured key whenever the scope has an applied record (else the apply would start from an empty state)."""

    title = "State: workspace and state object"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        sc = self.sc(ctx)
        return [f"{_rel(sc.root)}/.terraform/environment: the default workspace (no other selected by hand)",
                f"S3 HeadObject s3://{sc.backend.bucket}/{sc.backend.key}: must exist once {sc.label} has a record"]

    def check(self, ctx: IamRun) -> Decision:
        skipped = self.skip(ctx)
        if skipped:
            return skipped
        sc = self.sc(ctx)
        _check_workspace(sc)
        where = f"s3://{sc.backend.bucket}/{sc.backend.key}"
        if ctx.dry_run:
            return Decision(True, f"default workspace; {where} is looked up at run time")
        if ctx.backend_found is None and getattr(ctx, "backend_pending", None) is not None:
            deferred = ctx.__dict__.setdefault("_deferred_states", [])
            if sc not in deferred:
                deferred.append(sc)
            return Decision(True, f"default workspace; {where} is looked up while Terraform plans (nothing is "
                                  "applied unless it exists or the scope was never applied)")
        state = ctx.backend_found
        if state is None or sc.backend.bucket != ctx.backend.bucket or sc.backend.key not in state.states:
            from runbook import aws

            state = aws.backend_state(ctx.aws_session(), sc.account, sc.backend, [sc.backend.key])
            if not state.verified:
                raise RunbookError(
                    f"The Terraform backend of {sc.label} (bucket {sc.backend.bucket}, {sc.backend.lock_text})"
                    " is missing or incomplete; nothing was planned or applied",
                    id="backend-incomplete",
                    fix=f"see what is missing and why: {bootstrap_command(ctx)} --dry-run",
                )
        return Decision(True, _check_state(ctx, sc, state))


def _check_workspace(sc: Scope) -> None:
    """Refuse a Terraform workspace other than ``default`` selected in *sc*'s root module.

    ``terraform workspace select NAME`` writes NAME to ``.terraform/environment``; the S3 backend then
    keeps the state at ``env:/NAME/<key>`` (Terraform docs, "Backend Type: s3", workspace_key_prefix:
    https://developer.hashicorp.com/terraform/language/settings/backends/s3). Terraform runs without the
    shell's ``TF_DATA_DIR`` (:func:`runbook.terraform.child_env`), so ``.terraform`` is the one to read.
    """
    path = sc.root / ".terraform"
    try:
        name = (path / "environment").read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunbookError(f"Cannot read {path / 'environment'} ({type(exc).__name__}) to check the Terraform "
                           "workspace",
                           id="file-unreadable", fix=f"rm {shlex.quote(str(path / 'environment'))}") from None
    if name in ("", "default"):
        return
    root = _rel(sc.root)
    raise RunbookError(
        f"The root module {root} has the Terraform workspace {name!r} selected (by hand, in "
        f"{_rel(path / 'environment')}): Terraform would keep the state of {sc.label} at "
        f"env:/{name}/{sc.backend.key} instead of the configured s3://{sc.backend.bucket}/{sc.backend.key}, and the "
        "record would describe state that is not the team's; nothing was planned or applied",
        id="workspace-selected",
        where=str(path / "environment"),
        fix=f"cd {shlex.quote(root)} && terraform workspace select default",
    )


def _check_state(ctx: IamRun, sc: Scope, state, *, planned: bool = False) -> str:
    """Why *sc*'s state is the right one to plan from, or raise: a scope with an applied record must have its
    state object at the configured key. Remembers a passed check for the next run (see BackendStep).
    *planned*: the check comes after a plan that started before it (the message says so)."""
    where = f"s3://{sc.backend.bucket}/{sc.backend.key}"
    if state.states.get(sc.backend.key):
        written = state.versions.get(sc.backend.key)
        if ctx.terraform_version:
            terraform.check_state_version(ctx.terraform_version, written, where=where,
                                          binary=ctx.terraform_bin or "terraform", planned=planned)
        reason = f"default workspace; state {where} exists" + (f" (written by Terraform {written})" if written else "")
    elif ctx.applied_record(sc) is None:
        reason = f"default workspace; no state at {where} yet and no applied record: the first apply of {sc.label}"
    else:
        raise _state_missing(ctx, sc, ctx.applied_record(sc), planned=planned)
    if sc.backend.bucket == ctx.backend.bucket and sc.backend.lock_table == ctx.backend.lock_table:
        _remember_backend(ctx, sc.backend.key)
    return reason


def _state_missing(ctx: IamRun, sc: Scope, record: dict, *, planned: bool = False) -> RunbookError:
    """The refusal for a scope that has a record but no state at the configured key, with the commands that
    bring the state there (found in the bucket's versions, its other objects and the lock table's digests)."""
    from runbook import aws

    sess, b, account = ctx.aws_session(), sc.backend, sc.account
    target = f"s3://{b.bucket}/{b.key}"
    configured = {s.backend.key for s in account_scopes(ctx.config, account) if s.backend.bucket == b.bucket}
    marker = aws.deleted_state_version(sess, account, b, b.key)
    candidates = [f"s3://{b.bucket}/{k}" for k in aws.state_objects(sess, account, b, limit=1000)
                  if k not in configured and k == _printable(k)]
    candidates += [f"s3://{d}" for d in aws.state_digests(sess, account, b)
                   if f"s3://{d}" not in candidates and f"s3://{d}" != target and d == _printable(d)
                   and not (d.startswith(f"{b.bucket}/") and d.split("/", 1)[1] in configured)]
    field_name = f"terraform.backend.{sc.kind}_state_key"
    if marker:
        fix = ("the state object was deleted and the bucket kept its versions: restore it with "
               + aws.aws_command(account, "s3api", "delete-object", "--bucket", b.bucket, "--key", b.key,
                                 "--version-id", marker))
    elif len(candidates) == 1:
        fix = (f"if {field_name} or terraform.backend.state_bucket changed, move the state to the configured key: "
               + aws.aws_command(account, "s3", "cp", candidates[0], target)
               + f"; or set the configuration back so that it names {candidates[0]}")
    elif candidates:
        fix = (f"the state of {sc.label} is probably one of {', '.join(candidates[:5])}: copy the right one to the "
               "configured key, e.g. " + aws.aws_command(account, "s3", "cp", candidates[0], target)
               + "; or set the configuration back")
    else:
        fix = ("restore the state from a backup: " + aws.aws_command(account, "s3", "cp", "BACKUP.tfstate", target)
               + f"; only if the IAM of {sc.label} is to be planned from nothing (import what exists), delete its "
               "record first: " + aws.aws_command(account, "ssm", "delete-parameter", "--name", sc.parameter))
    return RunbookError(
        f"{sc.label[0].upper()}{sc.label[1:]} has an applied record (commit {str(record.get('commit', '?'))[:12]} at "
        f"{record.get('applied_at', '?')}), but its configured state {target} does not exist: Terraform would plan "
        "from an empty state and try to create IAM that exists; "
        + ("nothing was applied (the plan above started from that empty state, before this look-up answered)"
           if planned else "nothing was planned or applied"),
        id="state-missing",
        where=f"config fields {field_name} and terraform.backend.state_bucket",
        fix=fix,
    )


class ScriptStep(ScopedStep):
    """A run of deploy-app.sh in one mode."""

    mode = "plan"

    def env(self, ctx: IamRun) -> dict[str, str]:
        sc = self.sc(ctx)
        if ctx.credentials is None and not ctx.dry_run:
            raise RunbookError(f"No checked credentials to run Terraform with for {sc.label}; nothing was run",
                               id="aws-no-credentials",
                               fix="run the whole command again (its caller identity check freezes them)")
        env = terraform.script_env(sc.backend, mode=self.mode, tf_vars=sc.tf_vars(), terraform_bin=ctx.terraform_bin,
                                   credentials=ctx.credentials, terraform_version=ctx.terraform_version)
        if ctx.lock_timeout_s:
            env["TF_LOCK_TIMEOUT"] = f"{ctx.lock_timeout_s:.0f}s"
        return env

    def describe(self, ctx: IamRun) -> list[str]:
        env = {k: console.MASK if k == "AWS_ACCESS_KEY_ID" else v for k, v in console.mask_env(self.env(ctx)).items()}
        root = self.sc(ctx).root
        return [
            f"$ cd {shlex.quote(_rel(root))} && {shlex.join(terraform.command(root))}",
            "  env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
            "  credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN = the keys that pass the "
            f"caller identity check; {', '.join(terraform.CHILD_REMOVED[:2])}, the other credential sources, "
            f"TF_WORKSPACE, TF_DATA_DIR and {', '.join(p + '*' for p in terraform.CHILD_REMOVED_PREFIXES)} of this "
            "shell are removed, " + " ".join(f"{k}={v}" for k, v in terraform.CHILD_SHUT.items()),
        ]


class PlanStep(ScriptStep):
    title = "Terraform: plan"
    mode = "plan"

    def check(self, ctx: IamRun) -> Decision:
        return self.skip(ctx) or Decision(True, f"{self.because(ctx)}show what would change in {self.sc(ctx).label} "
                                                "before anything changes")

    def run(self, ctx: IamRun) -> str:
        sc = self.sc(ctx)
        ctx.fingerprints[sc.kind] = sc.fingerprint()  # what this plan is of: the record says so
        ctx.prefetch_ssm()
        try:
            terraform.run_script(sc.root, self.env(ctx), what=f"plan of {sc.label}")
        except RunbookError:
            _confirm_backend(ctx)  # a vanished backend explains a failed plan better than Terraform does
            raise
        _confirm_backend(ctx)
        ctx.plans[sc.kind] = summary = terraform.read_plan(sc.root)
        return f"Plan: {summary}"


class ConfirmStep(ScopedStep):
    title = "Confirm"

    def _why(self, ctx: IamRun) -> list[str]:
        why = []
        if ctx.environment.protected:
            why.append(f"environment {ctx.environment.name} is protected")
        summary = ctx.plans.get(self.sc(ctx).kind)
        if summary is not None and summary.destroy:
            why.append(f"the plan destroys {summary.destroy} resource(s)")
        return why

    def check(self, ctx: IamRun) -> Decision:
        skipped = self.skip(ctx)
        if skipped:
            return skipped
        if ctx.dry_run:
            if ctx.environment.protected:
                return Decision(True, f"environment {ctx.environment.name} is protected (--yes answers it)")
            return Decision(True, "asked only if the plan destroys anything (--yes answers it)")
        why = self._why(ctx)
        if not why:
            return Decision(False, "not protected and nothing is destroyed")
        return Decision(True, " and ".join(why))

    def run(self, ctx: IamRun) -> str:
        sc = self.sc(ctx)
        if not console.confirm(f"Apply this plan to {sc.label} ({ctx.plans.get(sc.kind)})?",
                               assume_yes=ctx.assume_yes):
            raise RunbookError(
                f"Not confirmed: nothing was applied to {sc.label}",
                id="not-confirmed",
                fix="run the same command again and answer y, after reading the plan",
            )
        return "confirmed"


class ApplyStep(ScriptStep):
    title = "Terraform: apply the saved plan"
    mode = "apply"

    def check(self, ctx: IamRun) -> Decision:
        skipped = self.skip(ctx)
        if skipped:
            return skipped
        summary = ctx.plans.get(self.sc(ctx).kind)
        if summary is not None and summary.empty:
            return Decision(True, "the plan has no changes; applying it confirms the state matches this commit")
        return Decision(True, "apply exactly the plan file just shown (what was reviewed is what is applied)")

    def run(self, ctx: IamRun) -> str:
        sc = self.sc(ctx)
        terraform.run_script(sc.root, self.env(ctx), what=f"apply to {sc.label}")
        return f"applied to {sc.label}: {ctx.plans.get(sc.kind)}"


class RecordStep(ScopedStep):
    title = "Record what was applied"

    def describe(self, ctx: IamRun) -> list[str]:
        sc = self.sc(ctx)
        return [f"SSM PutParameter {sc.parameter} (account {sc.account.id}): fingerprint, commit, "
                "branch, caller identity ARN, UTC time, outputs"]

    def check(self, ctx: IamRun) -> Decision:
        return self.skip(ctx) or Decision(True, "the pipeline's IAM gate and `inv iam.status` compare this commit "
                                                "with the record (written only after apply exited 0)")

    def run(self, ctx: IamRun) -> str:
        """Write the record. Runs only after the apply exited 0, so any failure here leaves the IAM applied
        and the record NOT written: the RunbookError says exactly that, why, and that running the same
        command again plans, finds no change, applies the empty plan and writes the record."""
        sc = self.sc(ctx)
        try:
            outputs = terraform.read_outputs(sc.root)
            record = records.Record.create(
                fingerprint=ctx.fingerprints.get(sc.kind) or sc.fingerprint(),
                commit=ctx.head or git.head_commit(ctx.cwd),
                branch=ctx.branch or ctx.environment.branch,
                applied_by=ctx.identity.arn,  # the identity of the very keys Terraform ran with (ScriptStep.env)
                scope=sc.record_scope,
                outputs={k: v for k, v in outputs.items() if k in RECORDED_OUTPUTS},
            )
            name = records.write(ctx.ssm_client(), ctx.config.project, sc.record_scope, record,
                                 endpoint_url=sc.account.endpoint_url, profile=sc.account.profile)
        except RunbookError as exc:
            raise _not_recorded(ctx, sc, exc) from None
        return f"{name} = {record.fingerprint[:12]}... at {record.commit[:12]}"


def _not_recorded(ctx: IamRun, sc: Scope, exc: RunbookError) -> RunbookError:
    """The error for an apply that succeeded and a record that could not be written (see RecordStep)."""
    first = exc.fix or ""
    for rewrite in (records.rewrite_command(sc.record_scope), sc.command(ctx.environment)):
        for tail in (f"; then {rewrite}", f", then {rewrite}", f"then {rewrite}", rewrite):
            if first.endswith(tail):
                first = first[: -len(tail)].rstrip(" ;,")
                break
    first = first.rstrip(" ;,")
    again = (f"run `{ctx.command}` again: it plans again, finds no change, applies the empty plan (nothing in "
             "IAM changes) and writes the record")
    return RunbookError(
        f"The IAM of {sc.label} WAS applied (terraform apply exited 0), but its applied record was NOT written "
        f"to SSM parameter {sc.parameter}, so `inv iam.status` shows it as not current and the pipeline's IAM "
        f"gate keeps waiting. Why: {exc.what.rstrip('.')}",
        id="applied-not-recorded",
        where=exc.where,
        fix=f"{first}; then {again}" if first else again[0].upper() + again[1:],
        code=exc.code,
    )


RECORDED_OUTPUTS = ("lambda_role_names", "deployer_user_name")


def _rel(path: Path) -> str:
    from runbook.config import PROJECT_ROOT

    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def preflight_steps() -> list[Step]:
    """The checks before anything changes, and the backend."""
    return [ConfigCheck(), GitCheck(), TerraformCheck(), IdentityCheck(), BackendStep()]


def scope_steps(scope: Scope | None = None) -> list[Step]:
    """Check the state, plan, confirm, apply and record one scope (``ctx.scope`` when *scope* is None)."""
    return [StateStep(scope), PlanStep(scope), ConfirmStep(scope), ApplyStep(scope), RecordStep(scope)]


def steps(ctx: IamRun) -> list[Step]:
    """The ordered steps for one IAM scope (see the module docstring); the account scope, shared by
    the environments of its account, also gets :class:`TakeOverCheck` before the backend."""
    shared: list[Step] = [TakeOverCheck()] if ctx.scope.kind == ACCOUNT else []
    preflight = preflight_steps()
    return preflight[:-1] + shared + preflight[-1:] + scope_steps()


def build(ctx: IamRun) -> Plan:
    """The plan for ``ctx.scope``; its resume command is the task's own command line."""
    return Plan(name=f"IAM for {ctx.label}", steps=steps(ctx), resume=ctx.command)


def environment_for(config: Config, name: str | None, cwd: Path | None = None, *, flag: str = "--env") -> Environment:
    """The environment *name*, or the one whose branch is checked out when *name* is None.

    *flag* is the option that names it in the calling task (``--env``, or ``--name`` for iam.env).
    Raises RunbookError when neither gives an environment, listing the branches.
    """
    if name is not None:
        return config.environment(name)
    branch = git.inspect(cwd).branch
    env = config.environment_for_branch(branch)
    if env is None:
        pairs = ", ".join(f"{e.name} ({e.branch})" for e in config.environments.values())
        raise RunbookError(
            f"The checked-out branch {branch!r} is not the branch of any environment ({pairs})",
            id="unknown-environment",
            fix=f"check out an environment's branch, or name it: {flag} {next(iter(config.environments))}",
        )
    return env


def bootstrap(ctx: IamRun, *, dry_run: bool = False) -> list[str]:
    """``inv iam.bootstrap``: create or repair the Terraform backend of ``ctx.account`` explicitly.

    Examine (caller identity, the bucket and its protections, the lock table, the records of every scope
    in the account, the lock table's state digests), show each action and why, warn when this is not a
    first deploy (state that lived in a deleted bucket does not come back), ask for confirmation
    (``ctx.assume_yes`` answers it), act, then look again to prove the backend is complete and verified.
    With *dry_run* only the read-only look-ups are made.

    Returns what was done, one line each (empty when nothing was needed or in a dry run).
    Raises RunbookError for the wrong account or credentials, a lock table with the wrong key schema,
    a refused confirmation, or any AWS error (naming the resource).
    """
    from runbook import aws, cache

    account, b = ctx.account, ctx.backend
    sess = ctx.aws_session()
    ctx.identity = ctx._look_up_identity()
    console.ok(f"caller identity: {ctx.identity.arn} in {ctx.identity.account_id}")
    keys = [s.backend.key for s in account_scopes(ctx.config, account) if s.backend.bucket == b.bucket]
    state = aws.backend_state(sess, account, b, keys)
    _refuse_wrong_lock_table(ctx, state)
    actions: list[tuple[str, str]] = []
    stale: list[str] = []
    if not state.bucket_exists:
        actions.append((f"create S3 bucket {b.bucket} in {account.region} with versioning, default encryption "
                        "(SSE-S3) and a full public access block",
                        "it does not exist; Terraform keeps the state of every IAM root module of the account in it"))
        if state.table_exists:
            stale = [d for d in aws.state_digests(sess, account, b) if d.startswith(f"{b.bucket}/")]
        if stale:
            shown = ", ".join(f"s3://{_printable(d)}" for d in stale[:5]) + (", ..." if len(stale) > 5 else "")
            actions.append((f"remove {len(stale)} state digest(s) of {b.bucket} from {b.lock_table} ({shown})",
                            "the new bucket holds no state, and Terraform refuses a state whose digest does not match "
                            "(\"state data in S3 does not have the expected content\")"))
    elif state.missing:
        actions.append((f"switch on {', '.join(state.missing)} of S3 bucket {b.bucket}",
                        "a state bucket must be versioned, encrypted and never public"))
    if state.table_needed and not state.table_exists:
        actions.append((f"create DynamoDB table {b.lock_table} (hash key LockID, string; on-demand billing)",
                        "it does not exist; Terraform locks the state in it"))
    elif not state.table_ready:
        actions.append((f"wait for DynamoDB table {b.lock_table}", f"it is {state.table_status}: another run is "
                                                                    "creating it"))
    if not actions:
        table = "; lock table keyed LockID" if b.uses_table else ""
        console.ok(f"Nothing to do: {_backend_words(b)} and verified (versioned, encrypted, public access "
                   f"blocked{table}).")
        return []
    evidence, _ = _earlier_deploys(ctx, state) if not state.complete else ([], [])
    console.say(f"Backend of account {account.name} ({account.id}), region {account.region}:")
    for what, why in actions:
        console.say(f"  - {what}")
        console.say(f"      why: {why}")
    if evidence:
        console.warn("This is NOT a first deploy into the account: " + "; ".join(evidence) + ".")
        console.warn("State that lived in a deleted bucket does not come back: afterwards each scope that has a record "
                     "but no state is refused until its state is restored (the refusal names the commands).")
    if dry_run:
        console.say()
        console.say(f"Dry run: nothing was changed. To do it: {bootstrap_command(ctx)}")
        return []
    if not console.confirm(f"Create or repair the backend of account {account.name} ({account.id}) as listed?",
                           assume_yes=ctx.assume_yes):
        raise RunbookError("Not confirmed: nothing was created or changed", id="not-confirmed",
                           fix=f"run `{bootstrap_command(ctx)}` again and answer y, after reading the list")
    done = []
    if not state.complete or not state.table_ready:
        done += aws.create_backend(sess, account, b, state)
    if state.bucket_exists and state.missing:
        done.append("switched on " + ", ".join(aws.repair_bucket(sess, account, b, state.missing)))
    if stale:
        removed = aws.forget_digests(sess, account, b)
        console.warn(f"Removed {len(removed)} state digest(s) of the re-created bucket {b.bucket} from "
                     f"{b.lock_table}: " + ", ".join(f"s3://{_printable(d)}" for d in removed))
        done.append(f"removed {len(removed)} stale state digest(s)")
    after = aws.backend_state(sess, account, b)
    _refuse_unverified(ctx, after)
    for key in keys:  # what this machine verified before is no longer known: the next runs look before planning
        cache.put("backend-seen", _backend_key(ctx, key), None)
    for line in done:
        console.ok(line)
    console.ok(f"The backend of account {account.name} ({account.id}) is ready: bucket {b.bucket}, {b.lock_text}.")
    return done
