"""``inv iam.account`` and ``inv iam.env``: the runbook's two manual IAM steps, made safe; ``inv iam.status``,
``inv iam.bootstrap`` and ``inv iam.unlock``. The library is imported inside each task, so that ``inv --list``
loads only this file."""

from __future__ import annotations

from runbook.tasks._common import (
    checkout,
    dry_run_only,
    for_a_person,
    given,
    pick_environment,
    print_json,
    seconds,
    target,
    task,
    user_errors,
)

COMMON_HELP = {
    "dry_run": "print every step, why, and the exact commands; call neither AWS nor Terraform",
    "yes": "answer the confirmation (protected environment, or anything destroyed) with yes",
    "skip_branch_check": "LOUD override: apply from a branch other than the environment's",
    "lock_timeout_s": "SECONDS (decimals too) Terraform waits for a state lock held by a run in progress (default "
                      "0: fail at once)",
    "verbose": "with --dry-run: also show each Terraform step's environment and credentials",
    "json": "with --dry-run: print the actions and findings as one JSON document (format 1, README 'JSON output') "
            "on stdout; the listing goes to stderr",
}
TAKE_OVER_HELP = ("apply the shared account scope although another branch applied another fingerprint "
                  "(--yes does not answer this)")


def _apply(kind: str, name: str | None, *, flag: str, dry_run: bool, yes: bool, skip_branch_check: bool,
           take_over: bool = False, lock_timeout_s=None, verbose: bool = False, json: bool = False) -> None:
    from runbook import console, iam
    from runbook.facts import Options
    from runbook.scopes import Scope

    dry_run_only(json, dry_run)
    cfg, here, environment = target(name, flag)
    scope = Scope.of_account(cfg, environment.account) if kind == "account" else Scope.of_environment(cfg, environment)
    opts = Options(dry_run=dry_run, assume_yes=yes, skip_branch_check=skip_branch_check, take_over=take_over,
                   lock_timeout_s=seconds(lock_timeout_s, "--lock-timeout-s", 0), verbose=verbose)
    command = " ".join([scope.command(environment), *given(yes=yes, skip_branch_check=skip_branch_check,
                                                           take_over=take_over, lock_timeout_s=lock_timeout_s)])
    with for_a_person(json):
        done = iam.run(cfg, environment, [scope], opts, command=command, checkout=here)
    if dry_run:
        if json:
            print_json(done.document(verbose))
        done.check()
    else:
        console.say()
        console.ok(f"IAM for {scope.label} is applied and recorded.")
        done.summary()


@task(help={"env": "environment whose account is meant (default: the one whose branch is checked out)",
            "take_over": TAKE_OVER_HELP, **COMMON_HELP})
@user_errors
def account(c, env=None, dry_run=False, yes=False, skip_branch_check=False, take_over=False, lock_timeout_s=None,
            verbose=False, json=False):
    """Apply the account-specific IAM root module (CI deployer policy, shared roles)."""
    _apply("account", env, flag="--env", dry_run=dry_run, yes=yes, skip_branch_check=skip_branch_check,
           take_over=take_over, lock_timeout_s=lock_timeout_s, verbose=verbose, json=json)


@task(name="env", help={"name": "environment to apply, e.g. stg (default: the one whose branch is checked out)",
                        "env": "the same as --name", **COMMON_HELP})
@user_errors
def env_(c, name=None, env=None, dry_run=False, yes=False, skip_branch_check=False, lock_timeout_s=None,
         verbose=False, json=False):
    """Apply the environment-specific IAM root module (the roles the environment's lambdas assume)."""
    from runbook.errors import RunbookError

    if name is not None and env is not None and name != env:
        raise RunbookError(f"--name {name!r} and --env {env!r} name two environments", id="flag-invalid",
                           fix=f"give one of them: inv iam.env --name {name}")
    _apply("environment", name if name is not None else env, flag="--name", dry_run=dry_run, yes=yes,
           skip_branch_check=skip_branch_check, lock_timeout_s=lock_timeout_s, verbose=verbose, json=json)


def _read_only_target(env):
    """(configuration, checkout, environment, [its account scope, its scope]) of ``iam.plan`` and ``iam.drift``:
    *env*, or the environment of the branch checked out."""
    from runbook.scopes import for_environment

    cfg, here, environment = target(env)
    return cfg, here, environment, for_environment(cfg, environment)


JSON_HELP = "print the result as one JSON document (format 1, README 'JSON output') on stdout; the rest to stderr"


@task(help={"env": "environment whose state is planned against (default: the one whose branch is checked out)",
            "json": JSON_HELP})
@user_errors
def plan(c, env=None, json=False):
    """Read-only Terraform plan of this commit's changed scopes against an environment's state.

    From any branch; no state lock, no record, nothing changed in AWS. Exit 0: no change; 2: changes; 1: failed."""
    from invoke import Exit

    from runbook import console, iam
    from runbook.errors import EXIT_CHANGES

    cfg, here, environment, scopes = _read_only_target(env)
    with for_a_person(json):
        plans = iam.preview(cfg, environment, scopes, f"inv iam.plan --env {environment.name}", checkout=here)
        changes = [f"{scope.label}: {text}" for scope, text, changing in plans if changing]
        console.say()
        if changes:
            console.warn(f"Merged into {environment.branch}, commit {here.head[:12]} would change: " +
                         "; ".join(changes))
        else:
            console.ok(f"No change: merged into {environment.branch}, commit {here.head[:12]} would apply nothing.")
    if json:
        print_json({"format": 1, "commit": here.head, "branch": here.branch, "environment": environment.name,
                    "changes": bool(changes), "scopes": [{**_scope_fields(scope), "changes": changing, "text": text}
                                                         for scope, text, changing in plans]})
    if changes:
        raise Exit(code=EXIT_CHANGES)


@task(help={"env": "environment whose IAM is compared with AWS (default: the one whose branch is checked out)",
            "json": JSON_HELP})
@user_errors
def drift(c, env=None, json=False):
    """Read-only check that AWS holds the IAM its applied commits say: finds changes made by hand.

    Plans the environment and its account at the commits their records name, without the state lock, and names
    every resource that differs. Applies nothing. Exit 0: no drift; 2: drift; 1: could not tell."""
    from invoke import Exit

    from runbook import console, iam
    from runbook.errors import EXIT_CHANGES

    cfg, here, environment, scopes = _read_only_target(env)
    with for_a_person(json):
        found = iam.drift(cfg, environment, scopes, f"inv iam.drift --env {environment.name}", checkout=here)
        console.say()
        if not any(found.values()):
            console.ok(f"No drift: AWS holds the IAM of {environment.name} and its account as applied.")
        for scope in (s for s in scopes if found.get(s.label)):
            console.warn(f"DRIFT in {scope.label}: AWS differs from its applied commit (changed by hand?):")
            for line in found[scope.label]:
                console.say(f"    {console.one_line(line)}")
            console.say(f"  To put it back as the code says (from branch {environment.branch}): "
                        f"{scope.command(environment)}")
    if json:
        print_json({"format": 1, "environment": environment.name, "drift": any(found.values()),
                    "scopes": [{**_scope_fields(scope), "differences": found[scope.label],
                                "fix": scope.command(environment) if found[scope.label] else None}
                               for scope in scopes]})
    if any(found.values()):
        raise Exit(code=EXIT_CHANGES)


def _scope_fields(scope) -> dict:
    """The fields that name a scope in every JSON document: kind, environment (None for the account), account."""
    return {"kind": scope.kind, "environment": scope.environment.name if scope.environment else None,
            "account": scope.account.name, "account_id": scope.account.id}


@task(help={"env": "environment whose account's backend is meant (default: the one whose branch is checked out)",
            "dry_run": "show what would be created or repaired and why (read-only AWS look-ups); change nothing",
            "yes": "answer the confirmation with yes (automation)"})
@user_errors
def bootstrap(c, env=None, dry_run=False, yes=False):
    """Create or repair the Terraform backend (state bucket, lock table) of an account, explicitly."""
    from runbook import config, iam

    cfg = config.load()
    iam.bootstrap(cfg, pick_environment(cfg, env), dry_run=dry_run, assume_yes=yes)


@task(help={"check": "exit 3 when any step is pending, never applied or unknown (for scripts); without --check "
                     "too, exit 1 when no record could be read at all",
            "env": "only this environment and its account",
            "json": "print the status as one JSON document (format 1, README 'JSON output') instead of the table"})
@user_errors
def status(c, check=False, env=None, json=False):
    """Show, per account and environment, whether the IAM for this commit is applied."""
    from runbook import config
    from runbook import records as state
    from runbook.errors import EXIT_NOT_CURRENT, RunbookError
    from runbook.scopes import all_scopes, for_environment

    cfg = config.load()
    here = checkout()
    statuses = state.examine(for_environment(cfg, cfg.environment(env)) if env else all_scopes(cfg))
    todo = state.commands(statuses, branch=here.branch)
    unknown = [st for st in statuses if st.state == state.UNKNOWN]
    if json:
        print_json(_document(here, statuses, todo))
    else:
        _table(cfg, here, statuses, todo, unknown)
    if unknown and len(unknown) == len(statuses):
        raise RunbookError(f"No applied record could be read ({len(unknown)} scope(s); the first: "
                           f"{unknown[0].reason}): the state of the IAM is not known", id="record-unreadable",
                           where=f"SSM parameters /{cfg.project}/iam/*",
                           fix="fix what the state column says (the network or endpoint_url, or aws sso login / "
                               "AWS_PROFILE for credentials), then run inv iam.status again")
    pending = [st for st in statuses if st.needed and st.state != state.UNKNOWN]
    if check and (pending or unknown):
        parts = [f"{len(pending)} IAM step(s) not current"] if pending else []
        parts += [f"{len(unknown)} scope(s) unreadable"] if unknown else []
        raise RunbookError(" and ".join(parts), id="not-current", code=EXIT_NOT_CURRENT,
                           fix="run the commands listed above" if todo else "fix what the state column says")


def _table(cfg, here, statuses, todo, unknown) -> None:
    """The human status: the commit, one row per scope, then the commands (or, on a branch that deploys no
    environment, what merging would need) and what could not be read."""
    from runbook import console

    branch = here.branch
    console.say(f"IAM status of commit {here.head[:12]} ({f'branch {branch}' if branch else 'detached HEAD'}):")
    rows = [("scope", "account", "state", "applied commit", "branch", "by", "when")]
    for st in statuses:
        rec = st.record or {}
        rows.append((st.scope.label.split(" (")[0] + (" [rehearsal]" if st.scope.account.local else ""),
                     st.scope.account.id, st.text, str(rec.get("commit") or "-")[:12], str(rec.get("branch") or "-"),
                     str(rec.get("applied_by") or "-").rsplit("/", 1)[-1], str(rec.get("applied_at") or "-")))
    rows = [tuple(console.one_line(cell) for cell in row) for row in rows]  # record fields are outside text
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        console.say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not any(e.branch == branch for e in cfg.environments.values()):
        _if_merged(cfg, statuses, branch or "detached HEAD")
    elif todo:
        console.say()
        console.warn("To apply what is pending (as an administrator, from the environment's branch):")
        for command in todo:
            console.say(f"    {command}")
    if unknown:
        console.say()
        console.warn(f"{len(unknown)} scope(s) could not be read (the reason is in the state column): fix that, e.g. "
                     "aws sso login or AWS_PROFILE for credentials, then run `inv iam.status` again.")


STATUS_FORMAT = 1
"""The version of ``inv iam.status --json``'s document (README, "JSON output"): raised when a field changes meaning
or goes away; new fields may be added within a version."""


def _document(here, statuses, todo) -> dict:
    """``inv iam.status --json``: the commit and branch, one object per scope, the commands."""
    fields = ("commit", "branch", "applied_by", "applied_at", "fingerprint")
    return {"format": STATUS_FORMAT, "commit": here.head, "branch": here.branch,
            "scopes": [{**_scope_fields(st.scope), "state": st.state, "text": st.text, "changed": list(st.changed),
                        "fingerprint": st.fingerprint,
                        "applied": None if st.record is None else {key: None if st.record.get(key) is None else
                                                                   str(st.record.get(key)) for key in fields}}
                       for st in statuses],
            "commands": todo}


def _if_merged(cfg, statuses, branch: str) -> None:
    """On a branch that deploys no environment (a pull request's): what merging this commit into each
    environment's branch would need there, compared with that environment's applied records."""
    from runbook import console
    from runbook import records as state
    from runbook.scopes import for_environment

    console.say()
    console.say(f"{branch} deploys no environment. Merged into an environment's branch, this commit would need:")
    examined = {st.scope.environment.name for st in statuses if st.scope.environment}
    for env in (e for e in cfg.environments.values() if e.name in examined):  # --env: that one only
        scopes = for_environment(cfg, env)
        mine = [st for st in statuses if st.scope in scopes]
        todo = [st for st in mine if st.state in (state.PENDING, state.NEVER_APPLIED)]
        unknown = [st for st in mine if st.state == state.UNKNOWN]
        needs = " && ".join(dict.fromkeys(st.scope.command(env, env.branch) for st in todo)) or (
            "cannot tell" if unknown else "nothing")
        why = "; ".join(f"{st.scope.label.split(' (')[0]}: {st.text}" for st in todo + unknown)
        console.say(f"  merged into {env.branch} ({env.name}): {needs}" + (f"  ({console.one_line(why)})" if why
                                                                          else ""))


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

    from runbook import aws, backend, config, console
    from runbook.errors import RunbookError
    from runbook.scopes import Scope

    cfg = config.load()
    environment = pick_environment(cfg, env)
    scope = Scope.of_account(cfg, environment.account) if account else Scope.of_environment(cfg, environment)
    b = scope.backend
    where = f"s3://{b.bucket}/{b.key}, {b.lock_text}"
    session = aws.session(scope.account)
    console.say(f"{scope.label}: state {where}; you are {aws.caller_identity(session, scope.account).arn}")
    held = backend.read_lock(session, scope.account, b)
    if held is None:
        console.ok(f"The state of {scope.label} is not locked: nothing to release.")
        return
    console.warn(f"The state of {scope.label} is locked: {held.describe()}.")
    again = shlex.join(["inv", "iam.unlock", *(["--account"] if account else []), "--env", environment.name,
                        "--lock-id", held.id])
    if lock_id is None or held.id != lock_id:
        raise RunbookError(
            "No --lock-id given, so nothing was released: name the lock you mean to release, so that a lock taken "
            "meanwhile by another run is never released by mistake" if lock_id is None else
            f"The lock held now has ID {held.id!r}, not {lock_id!r}: it is another run's lock, so nothing was released",
            id="unlock-refused", where=where,
            fix=f"once you know the run that holds it has stopped: {again}" if lock_id is None else
            f"wait for that run; if it has died too, release its lock with {again}")
    if dry_run:
        items = [f"the lock file s3://{b.bucket}/{b.lock_object} (ETag {held.etag})"] if held.etag else []
        items += [f"the lock item {b.bucket}/{b.key} of table {b.lock_table}"] if b.uses_table else []
        console.say(f"Dry run: would delete {' and '.join(items)} while it still holds lock {held.id} (released "
                    "nothing).")
        return
    console.warn("Release it only if that run has stopped (its Terraform process is gone): releasing the lock of a "
                 "run in progress lets two runs write the same state.")
    if not console.confirm(f"Release lock {held.id} of {scope.label}?", assume_yes=yes):
        raise RunbookError(f"Not confirmed: lock {held.id} is still held", id="not-confirmed",
                           fix="run the same command again and answer y once you know the run that holds it has "
                               "stopped")
    backend.release_lock(session, scope.account, b, held)
    console.ok(f"Released lock {held.id} of {scope.label}. Run the step again: {scope.command(environment)}")
