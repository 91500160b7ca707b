"""The IAM steps of the runbook and the plans built from them.

``build(ctx)`` gives the ordered steps for one scope: "account" (the
account-specific root module) or "environment" (the environment-specific one):

1. preflight: configuration, git, Terraform, AWS caller identity;
2. backend: S3 state bucket and DynamoDB lock table, created when absent;
3. plan (``deploy-app.sh`` in plan mode), confirmation where needed, apply of
   exactly that plan file.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import console, fingerprint, git, records, terraform
from runbook.config import Account, Config, Environment
from runbook.errors import RunbookError
from runbook.plan import Decision, Plan, Step
from runbook.scopes import Scope


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
        cwd: the git checkout to check (default: the current directory).
        lock_timeout_s: seconds Terraform waits for a state lock held by another run (0: fail at once).
    """

    config: Config
    scope: Scope
    environment: Environment
    dry_run: bool = False
    assume_yes: bool = False
    skip_branch_check: bool = False
    cwd: Path | None = None
    lock_timeout_s: float = 0.0
    session: Any = None
    identity: Any = None
    terraform_bin: str | None = None
    head: str | None = None
    branch: str | None = None
    fingerprint: str | None = None
    backend_pending: Any = None
    summary: terraform.PlanSummary | None = None
    created: list[str] = field(default_factory=list)
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
        return self.scope.command(self.environment)

    def tf_vars(self) -> dict[str, str]:
        return self.scope.tf_vars()

    def scopes(self) -> list[Scope]:
        """The scopes this run may apply (one here; a release has two)."""
        return [self.scope]

    def aws_session(self):
        if self.session is None:
            from runbook import aws

            self.session = aws.session(self.account)
        return self.session

    def prefetch(self) -> None:
        """Start the slow read-only look-ups of a real run in the background.

        ``terraform version`` (a 90 MB binary starting), and on one AWS thread in
        this order: importing boto3 and STS GetCallerIdentity, then (only if the
        account is the right one) the backend's HeadBucket and DescribeTable. They
        overlap with the git checks and, when the backend is known to exist, with
        Terraform's plan (see :class:`BackendStep`); the steps take their results in
        order, so messages and failures still come in the order of the plan.
        Nothing here changes anything.
        """
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-terraform")
        aws_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight-aws")
        identity = aws_pool.submit(self._look_up_identity)
        self._futures = {
            "terraform": pool.submit(terraform.find, self.config.required_version),
            "identity": identity,
            "backend": aws_pool.submit(self._look_up_backend, identity),
        }
        pool.shutdown(wait=False)
        self._aws_pool = aws_pool  # one thread for every boto3 call: a Session is not thread-safe

    def _look_up_identity(self):
        from runbook import aws

        return aws.caller_identity(self.aws_session(), self.account, purpose=self.label)

    def _look_up_backend(self, identity=None):
        """BackendState, or the RunbookError that stopped the look-up; None when the identity failed."""
        from runbook import aws

        if identity is not None and identity.exception() is not None:
            return None  # never look around in an account the credentials are not for
        try:
            return aws.backend_state(self.aws_session(), self.account, self.backend)
        except RunbookError as exc:
            return exc

    def prefetch_ssm(self) -> None:
        """Build the SSM client for the record in the background while Terraform runs (it costs ~0.05 s
        of CPU that would otherwise come after the apply)."""
        from runbook import aws

        pool = getattr(self, "_aws_pool", None)
        if pool is None or "ssm" in self._futures:
            return
        self._futures["ssm"] = pool.submit(lambda: aws.client(self.aws_session(), "ssm", self.account))

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
                                                     endpoint_url=scope.account.endpoint_url)
        return known[scope.record_scope]

    def remember_record(self, scope: Scope, record: dict | None) -> None:
        """Keep a record read by another look-up, so :meth:`applied_record` does not read it again."""
        self.__dict__.setdefault("_records", {})[scope.record_scope] = record


class ConfigCheck(Step):
    title = "Preflight: configuration"
    preflight = True

    def check(self, ctx: IamRun) -> Decision:
        from runbook.config import check_roots

        check_roots(ctx.config)
        return Decision(True, f"{ctx.config.path} is valid; {ctx.label} uses account {ctx.account.id} "
                              f"in {ctx.account.region}")

    def run(self, ctx: IamRun) -> str:
        return self.check(ctx).reason


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
        b = ctx.environment.branch
        fetch = "(dry run: compared with the last fetch, no network)" if ctx.dry_run else ""
        return [f"$ git rev-parse --abbrev-ref HEAD; git status --porcelain; git fetch origin {b} {fetch}".rstrip()]

    def check(self, ctx: IamRun) -> Decision:
        refuse_leftovers(ctx)
        branch = ctx.environment.branch
        checkout = git.inspect(ctx.cwd)
        ctx.head, ctx.branch = checkout.head, checkout.branch
        if checkout.branch != branch:
            if not ctx.skip_branch_check:
                raise RunbookError(
                    f"The checkout is on branch {checkout.branch!r}, but {ctx.label} is deployed from "
                    f"{branch!r}: the IAM must be applied from the branch being deployed",
                    where=str(ctx.cwd or Path.cwd()),
                    fix=f"git checkout {branch} && git pull --ff-only",
                )
            console.warn(f"BRANCH CHECK OVERRIDDEN (--skip-branch-check): applying from {checkout.branch!r}, "
                         f"not {branch!r}. The pipeline of {branch!r} will not match what you apply.")
        if not checkout.clean:
            shown = ", ".join(c[3:] for c in checkout.changes[:5])
            more = f" and {len(checkout.changes) - 5} more" if len(checkout.changes) > 5 else ""
            raise RunbookError(
                f"The working tree has uncommitted changes ({shown}{more}); what is applied must be "
                "exactly what is committed",
                where=str(ctx.cwd or Path.cwd()),
                fix="commit or stash them (git stash --include-untracked), then run again",
            )
        for scope in ctx.scopes():
            untracked = sorted(set(fingerprint.root_files(scope.root)) - git.tracked_files(scope.root))
            if untracked:
                raise RunbookError(
                    f"The root module {_rel(scope.root)} holds files git does not track ({', '.join(untracked[:5])}): "
                    "Terraform would apply them, but they are not in the commit the pipeline deploys",
                    where=str(scope.root),
                    fix="commit them, or move them out of the root module (git status --ignored shows them)",
                )
        target = checkout.branch if ctx.skip_branch_check else branch
        remote = git.remote_commit(target, fetch=not ctx.dry_run, cwd=ctx.cwd)
        if remote is None:
            raise RunbookError(
                f"There is no origin/{target}: the branch was never pushed or fetched",
                fix=f"git push -u origin {target}" if not ctx.dry_run else f"git fetch origin {target}",
            )
        if remote != checkout.head:
            raise RunbookError(
                f"HEAD is {checkout.head[:12]} but origin/{target} is {remote[:12]}: the local branch is "
                "not what was merged",
                fix="git pull --ff-only  (or push your commits first if you are ahead)",
            )
        return Decision(True, f"on {target} at {checkout.head[:12]}, clean, equal to origin/{target}")

    def run(self, ctx: IamRun) -> str:
        return self.check(ctx).reason


class TerraformCheck(Step):
    title = "Preflight: Terraform"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        return [f"$ terraform version -json   (must satisfy {ctx.config.required_version!r})"]

    def check(self, ctx: IamRun) -> Decision:
        if ctx.dry_run:
            found = shutil.which("terraform")
            if not found:
                raise RunbookError("terraform is not on PATH", fix=terraform.INSTALL_HINT)
            return Decision(True, f"found {found}; its version is checked at run time")
        ctx.terraform_bin, version = ctx.fetched("terraform", lambda: terraform.find(ctx.config.required_version))
        return Decision(True, f"Terraform {version} at {ctx.terraform_bin}")

    def run(self, ctx: IamRun) -> str:
        return self.check(ctx).reason


class IdentityCheck(Step):
    title = "Preflight: AWS caller identity"
    preflight = True

    def describe(self, ctx: IamRun) -> list[str]:
        via = f", endpoint {ctx.account.endpoint_url}" if ctx.account.endpoint_url else ""
        profile = f", profile {ctx.account.profile}" if ctx.account.profile else ""
        return [f"STS GetCallerIdentity (region {ctx.account.region}{profile}{via}): "
                f"must be account {ctx.account.id}"]

    def check(self, ctx: IamRun) -> Decision:
        if ctx.dry_run:
            return Decision(True, "checked at run time (not called in a dry run)")
        ctx.identity = ctx.fetched("identity", ctx._look_up_identity)
        return Decision(True, f"{ctx.identity.arn} in {ctx.identity.account_id} for {ctx.environment.name}")

    def run(self, ctx: IamRun) -> str:
        return self.check(ctx).reason


class BackendStep(Step):
    title = "Backend: state bucket and lock table"

    def describe(self, ctx: IamRun) -> list[str]:
        b = ctx.backend
        return [f"S3 bucket {b.bucket} (versioned, encrypted, public access blocked), key {b.key}",
                f"DynamoDB lock table {b.lock_table} (hash key LockID)"]

    def check(self, ctx: IamRun) -> Decision:
        if ctx.dry_run:
            return Decision(True, "created when absent, left alone when present (looked up at run time)")
        b = ctx.backend
        if ctx.needed is not None and not any(needed for needed, _ in ctx.needed.values()):
            return Decision(False, "no IAM step is needed, so the backend is not used")
        seen = _backend_seen(ctx)
        if seen and "backend" in getattr(ctx, "_futures", {}):
            # Seen on an earlier run: let Terraform start; PlanStep takes the look-up's answer after the
            # plan and says so plainly if the backend has gone meanwhile.
            ctx.backend_pending = ctx._futures.pop("backend")
            return Decision(False, f"bucket {b.bucket} and table {b.lock_table} exist (seen {seen}; looked up "
                                   "again while Terraform plans)")
        state = ctx.fetched("backend", ctx._look_up_backend)
        if isinstance(state, RunbookError):
            raise state
        if state.complete:
            _remember_backend(ctx)
            return Decision(False, f"bucket {b.bucket} and table {b.lock_table} exist")
        missing = [n for n, ok in (("bucket", state.bucket_exists), ("lock table", state.table_exists)) if not ok]
        return Decision(True, f"first deploy into this account: the {' and '.join(missing)} must be created")

    def run(self, ctx: IamRun) -> str:
        from runbook import aws

        ctx.created = aws.ensure_backend(ctx.aws_session(), ctx.account, ctx.backend)
        _remember_backend(ctx)
        return "created " + "; ".join(ctx.created) if ctx.created else "nothing to create"


def _backend_key(ctx: IamRun) -> str:
    b = ctx.backend
    return "|".join([ctx.account.endpoint_url or "aws", ctx.account.id, b.region, b.bucket, b.lock_table])


def _backend_seen(ctx: IamRun) -> str | None:
    from runbook import cache

    return cache.get("backend-seen", _backend_key(ctx))


def _remember_backend(ctx: IamRun) -> None:
    import time

    from runbook import cache

    cache.put("backend-seen", _backend_key(ctx), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def _confirm_backend(ctx: IamRun) -> None:
    """Take the background backend look-up's answer (see BackendStep); raise if the backend has gone."""
    pending = getattr(ctx, "backend_pending", None)
    if pending is None:
        return
    ctx.backend_pending = None
    state = pending.result()
    if isinstance(state, RunbookError):
        raise state
    if state is not None and not state.complete:
        from runbook import cache

        cache.put("backend-seen", _backend_key(ctx), None)
        gone = [n for n, ok in ((f"S3 bucket {ctx.backend.bucket}", state.bucket_exists),
                                (f"DynamoDB table {ctx.backend.lock_table}", state.table_exists)) if not ok]
        empty = " (with an empty state: the state lived in the bucket)" if not state.bucket_exists else ""
        raise RunbookError(
            f"The Terraform backend has gone: {' and '.join(gone)} existed on an earlier run but not "
            "now; nothing was applied",
            fix=f"if it was deleted on purpose, run the same command again: it creates what is missing afresh{empty}; "
            "otherwise find out who deleted it first",
        )


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


class ScriptStep(ScopedStep):
    """A run of deploy-app.sh in one mode."""

    mode = "plan"

    def env(self, ctx: IamRun) -> dict[str, str]:
        sc = self.sc(ctx)
        env = terraform.script_env(sc.backend, mode=self.mode, tf_vars=sc.tf_vars(), terraform_bin=ctx.terraform_bin,
                                   profile=sc.account.profile)
        if ctx.lock_timeout_s:
            env["TF_LOCK_TIMEOUT"] = f"{ctx.lock_timeout_s:.0f}s"
        return env

    def describe(self, ctx: IamRun) -> list[str]:
        env = console.mask_env(self.env(ctx))
        root = self.sc(ctx).root
        return [
            f"$ cd {shlex.quote(_rel(root))} && {shlex.join(terraform.command(root))}",
            "  env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
        ]


class PlanStep(ScriptStep):
    title = "Terraform: plan"
    mode = "plan"

    def check(self, ctx: IamRun) -> Decision:
        return self.skip(ctx) or Decision(True, f"{self.because(ctx)}show what would change in {self.sc(ctx).label} "
                                                "before anything changes")

    def run(self, ctx: IamRun) -> str:
        sc = self.sc(ctx)
        ctx.fingerprint = sc.fingerprint()
        ctx.prefetch_ssm()
        try:
            terraform.run_script(sc.root, self.env(ctx), what=f"plan of {sc.label}")
        except RunbookError:
            _confirm_backend(ctx)  # a vanished backend explains a failed plan better than Terraform does
            raise
        _confirm_backend(ctx)
        ctx.summary = terraform.read_plan(sc.root)
        return f"Plan: {ctx.summary}"


class ConfirmStep(ScopedStep):
    title = "Confirm"

    def _why(self, ctx: IamRun) -> list[str]:
        why = []
        if ctx.environment.protected:
            why.append(f"environment {ctx.environment.name} is protected")
        if ctx.summary is not None and ctx.summary.destroy:
            why.append(f"the plan destroys {ctx.summary.destroy} resource(s)")
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
        if not console.confirm(f"Apply this plan to {sc.label} ({ctx.summary})?", assume_yes=ctx.assume_yes):
            raise RunbookError(
                f"Not confirmed: nothing was applied to {sc.label}",
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
        if ctx.summary is not None and ctx.summary.empty:
            return Decision(True, "the plan has no changes; applying it confirms the state matches this commit")
        return Decision(True, "apply exactly the plan file just shown (what was reviewed is what is applied)")

    def run(self, ctx: IamRun) -> str:
        sc = self.sc(ctx)
        terraform.run_script(sc.root, self.env(ctx), what=f"apply to {sc.label}")
        return f"applied to {sc.label}: {ctx.summary}"


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
        sc = self.sc(ctx)
        outputs = terraform.read_outputs(sc.root)
        record = records.Record.create(
            fingerprint=ctx.fingerprint or sc.fingerprint(),
            commit=ctx.head or git.head_commit(ctx.cwd),
            branch=ctx.branch or ctx.environment.branch,
            applied_by=ctx.identity.arn,
            scope=sc.record_scope,
            outputs={k: v for k, v in outputs.items() if k in RECORDED_OUTPUTS},
        )
        name = records.write(ctx.ssm_client(), ctx.config.project, sc.record_scope, record,
                             endpoint_url=sc.account.endpoint_url)
        return f"{name} = {record.fingerprint[:12]}... at {record.commit[:12]}"


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
    """Plan, confirm, apply and record one scope (``ctx.scope`` when *scope* is None)."""
    return [PlanStep(scope), ConfirmStep(scope), ApplyStep(scope), RecordStep(scope)]


def steps(ctx: IamRun) -> list[Step]:
    """The ordered steps for one IAM scope (see the module docstring)."""
    return preflight_steps() + scope_steps()


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
            fix=f"check out an environment's branch, or name it: {flag} {next(iter(config.environments))}",
        )
    return env
