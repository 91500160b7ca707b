"""``inv iam.account`` and ``inv iam.env``: the runbook's two manual IAM steps, made safe; ``inv iam.bootstrap``
and ``inv iam.unlock``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import task

from runbook.tasks._common import seconds, user_errors

if TYPE_CHECKING:
    from runbook.iam import IamRun

# The library is imported inside each task, so that `inv --list` loads only this file.

COMMON_HELP = {
    "dry_run": "print every step, why, and the exact commands; call neither AWS nor Terraform",
    "yes": "answer the confirmation (protected environment, or anything destroyed) with yes",
    "skip_branch_check": "LOUD override: apply from a branch other than the environment's",
    "lock_timeout_s": "SECONDS Terraform waits for a state lock held by a run in progress (default 0: fail at once)",
}


def _run(ctx: IamRun) -> None:
    from runbook import console, iam

    plan = iam.build(ctx)
    if ctx.dry_run:
        plan.dry_run(ctx)
        return
    ctx.prefetch()
    plan.run(ctx)
    console.say()
    console.ok(f"IAM for {ctx.label} is applied.")
    plan.summary()


TAKE_OVER_HELP = ("apply the shared account scope although another branch applied another fingerprint "
                  "(--yes does not answer this)")


@task(help={"env": "environment whose account is meant (default: the one whose branch is checked out)",
            "take_over": TAKE_OVER_HELP, **COMMON_HELP})
@user_errors
def account(c, env=None, dry_run=False, yes=False, skip_branch_check=False, take_over=False, lock_timeout_s=None):
    """Apply the account-specific IAM root module (CI deployer policy, shared roles)."""
    from runbook import config as configuration
    from runbook import iam
    from runbook.scopes import Scope

    cfg = configuration.load()
    environment = iam.environment_for(cfg, env)
    _run(iam.IamRun(cfg, Scope.of_account(cfg, environment.account), environment, dry_run=dry_run, assume_yes=yes,
                    skip_branch_check=skip_branch_check, take_over=take_over,
                    lock_timeout_s=seconds(lock_timeout_s, "--lock-timeout-s", 0)))


@task(name="env", help={"name": "environment to apply, e.g. stg (default: the one whose branch is checked out)",
                        **COMMON_HELP})
@user_errors
def env_(c, name=None, dry_run=False, yes=False, skip_branch_check=False, lock_timeout_s=None):
    """Apply the environment-specific IAM root module (the roles the environment's lambdas assume)."""
    from runbook import config as configuration
    from runbook import iam
    from runbook.scopes import Scope

    cfg = configuration.load()
    environment = iam.environment_for(cfg, name, flag="--name")
    _run(iam.IamRun(cfg, Scope.of_environment(cfg, environment), environment, dry_run=dry_run, assume_yes=yes,
                    skip_branch_check=skip_branch_check,
                    lock_timeout_s=seconds(lock_timeout_s, "--lock-timeout-s", 0)))


@task(help={"env": "environment whose account's backend is meant (default: the one whose branch is checked out)",
            "dry_run": "show what would be created or repaired and why (read-only AWS look-ups); change nothing",
            "yes": "answer the confirmation with yes (automation)"})
@user_errors
def bootstrap(c, env=None, dry_run=False, yes=False):
    """Create or repair the Terraform backend (state bucket, lock table) of an account, explicitly."""
    from runbook import config as configuration
    from runbook import iam
    from runbook.scopes import Scope

    cfg = configuration.load()
    environment = iam.environment_for(cfg, env)
    iam.bootstrap(iam.IamRun(cfg, Scope.of_account(cfg, environment.account), environment, assume_yes=yes),
                  dry_run=dry_run)


def _checked_out_branch() -> str | None:
    """The branch checked out here, or None outside a git checkout (the suggestions then name no checkout)."""
    from runbook import git
    from runbook.errors import RunbookError

    try:
        return git.inspect().branch
    except RunbookError:
        return None


@task(help={"check": "exit non-zero (3) when any step is pending, never applied or unknown (for scripts); "
                     "without --check too, 1 when no record could be read at all"})
@user_errors
def status(c, check=False):
    """Show, per account and environment, whether the IAM for this commit is applied."""
    from runbook import config as configuration
    from runbook import console
    from runbook import status as state
    from runbook.errors import RunbookError

    cfg = configuration.load()
    statuses = state.examine(state.all_scopes(cfg))
    rows = [("scope", "account", "state", "applied commit", "branch", "by", "when")]
    for st in statuses:
        rec = st.record or {}
        rehearsal = " [rehearsal]" if st.scope.account.endpoint_url else ""
        rows.append((
            st.scope.label.split(" (")[0] + rehearsal,
            st.scope.account.id,
            st.text,
            (rec.get("commit") or "-")[:12],
            rec.get("branch") or "-",
            (rec.get("applied_by") or "-").rsplit("/", 1)[-1],
            rec.get("applied_at") or "-",
        ))
    rows = [tuple(console.one_line(cell) for cell in row) for row in rows]  # record fields are outside text
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        console.say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    todo = state.commands(statuses, branch=_checked_out_branch())
    if todo:
        console.say()
        console.warn("To apply what is pending (as an administrator, from the environment's branch):")
        for command in dict.fromkeys(todo):
            console.say(f"    {command}")
    unknown = [st for st in statuses if st.state == state.UNKNOWN]
    if unknown:
        console.say()
        console.warn(f"{len(unknown)} scope(s) could not be read (the reason is in the state column): fix that, "
                     "e.g. aws sso login or AWS_PROFILE for credentials, then run `inv iam.status` again.")
    if unknown and len(unknown) == len(statuses):
        raise RunbookError(
            f"No applied record could be read ({len(unknown)} scope(s); the first: {unknown[0].reason}): the state "
            "of the IAM is not known",
            id="record-unreadable",
            where=f"SSM parameters /{cfg.project}/iam/*",
            fix="fix what the state column says (the network or endpoint_url, or aws sso login / AWS_PROFILE for "
            "credentials), then run inv iam.status again",
        )
    if check and any(st.needed for st in statuses):
        raise RunbookError(
            f"{sum(st.needed for st in statuses)} IAM step(s) are not current",
            id="not-current", fix="run the commands listed above",
            code=3,
        )


@task(help={
    "lock_id": "ID of the lock to release, as the failed run printed it (Terraform's Lock Info: ID)",
    "env": "environment whose state lock it is, e.g. stg (default: the one whose branch is checked out)",
    "account": "release the lock of the account root module (of the environment's account) instead",
    "yes": "answer the confirmation with yes (only when you know the run that held it has died)",
    "dry_run": "show who holds the lock and what would be deleted; release nothing",
})
@user_errors
def unlock(c, lock_id=None, env=None, account=False, yes=False, dry_run=False):
    """Release a Terraform state lock left by a run that died (after showing who holds it and asking)."""
    import shlex

    from runbook import aws, console, iam, statelock
    from runbook import config as configuration
    from runbook.errors import RunbookError
    from runbook.scopes import Scope

    cfg = configuration.load()
    environment = iam.environment_for(cfg, env)
    scope = Scope.of_account(cfg, environment.account) if account else Scope.of_environment(cfg, environment)
    backend = scope.backend
    where = f"s3://{backend.bucket}/{backend.key}, {backend.lock_text}"
    session = aws.session(scope.account)
    identity = aws.caller_identity(session, scope.account, purpose=scope.label)
    console.say(f"{scope.label}: state {where}; you are {identity.arn}")
    held = statelock.read_lock(session, scope.account, backend)
    if held is None:
        console.ok(f"The state of {scope.label} is not locked: nothing to release.")
        return
    console.warn(f"The state of {scope.label} is locked: {held.describe()}.")
    if lock_id is None:
        again = shlex.join(["inv", "iam.unlock", *(["--account"] if account else []), "--env", environment.name,
                            "--lock-id", held.id])
        raise RunbookError(
            "No --lock-id given, so nothing was released: name the lock you mean to release, so that a lock taken "
            "meanwhile by another run is never released by mistake",
            id="unlock-refused",
            where=where,
            fix=f"once you know the run that holds it has stopped: {again}",
        )
    if held.id != lock_id:
        again = shlex.join(["inv", "iam.unlock", *(["--account"] if account else []), "--env", environment.name,
                            "--lock-id", held.id])
        raise RunbookError(
            f"The lock held now has ID {held.id!r}, not {lock_id!r}: it is another run's lock, so nothing was "
            "released",
            id="unlock-refused",
            where=where,
            fix=f"wait for that run; if it has died too, release its lock with {again}",
        )
    if dry_run:
        item = (f"the lock file s3://{backend.bucket}/{backend.lock_object} (ETag {held.etag})"
                if held.etag else f"the lock item {backend.bucket}/{backend.key} of table {backend.lock_table}")
        console.say(f"Dry run: would delete {item} if it still holds lock {held.id} (released nothing).")
        return
    console.warn("Release it only if that run has stopped (its Terraform process is gone): releasing the lock of "
                 "a run in progress lets two runs write the same state.")
    if not console.confirm(f"Release lock {held.id} of {scope.label}?", assume_yes=yes):
        raise RunbookError(f"Not confirmed: lock {held.id} is still held",
                           id="not-confirmed", fix="run the same command again and "
                           "answer y once you know the run that holds it has stopped")
    statelock.release_lock(session, scope.account, backend, held)
    console.ok(f"Released lock {held.id} of {scope.label}. Run the step again: {scope.command(environment)}")
