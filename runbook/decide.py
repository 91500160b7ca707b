"""Decide: plain functions from a run's facts (:class:`runbook.facts.Facts`) to what stops it and what it does.

Findings are RunbookErrors with their fix; :func:`actions` gives the ordered actions with their reasons and exact
commands. The dry run, ``inv iam.status`` and the real run share them; they are tested without a subprocess.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from runbook import console, records, terraform, versions
from runbook.errors import RunbookError
from runbook.facts import Facts
from runbook.scopes import ACCOUNT, Scope


@dataclass(frozen=True)
class Action:
    """One thing a run does: ``kind`` ("backend", "take-over", "plan", "confirm", "apply", "record"), a title, the
    reason, the scope it acts on (None for the backend), the exact commands or API calls, and whether it is
    needed at all (an action not needed is shown as skipped, with its reason)."""

    kind: str
    title: str
    reason: str
    scope: Scope | None = None
    lines: tuple[str, ...] = ()
    needed: bool = True


def bootstrap_command(facts: Facts) -> str:
    return f"inv iam.bootstrap --env {shlex.quote(facts.environment.name)}"


def local_findings(facts: Facts) -> list[RunbookError]:
    """What this machine's facts say would stop the run, in the order a person fixes them."""
    found = list(facts.blocked)
    co, branch = facts.checkout, facts.environment.branch
    label = facts.scopes[-1].label
    if co.detached or (co.branch != branch and not facts.opts.skip_branch_check):
        skip = " (--skip-branch-check needs a branch: a detached HEAD has none)" if facts.opts.skip_branch_check else ""
        on = f"HEAD is detached at {co.head[:12]}" if co.detached else f"The checkout is on branch {co.branch!r}"
        found.append(RunbookError(f"{on}, but {label} is deployed from branch {branch!r}: the IAM must be applied "
                                  f"from the branch being deployed{skip}", id="wrong-branch",
                                  fix=f"git checkout {shlex.quote(branch)} && git pull --ff-only"))
    elif facts.remote is not None:
        ours, team = f"{facts.remote.name}/{facts.target_branch}", facts.remote
        if facts.remote_head is None:
            remote, branch = shlex.quote(team.name), shlex.quote(facts.target_branch)
            found.append(RunbookError(
                f"There is no {ours} (remote {team.name}: {team.why}): the branch was never pushed there, or (in a dry "
                "run, which does not fetch) not fetched since", id="head-not-on-remote",
                fix=f"git fetch {remote}, then run again (a dry run compares with the last fetch)" if facts.opts.dry_run
                else ("a rehearsal against a local AWS: never push to the team's repository for it; give this clone "
                      "a local bare remote: git init --bare /tmp/rehearsal.git && git remote add rehearsal "
                      f"/tmp/rehearsal.git && git push -u rehearsal {branch}") if facts.rehearsal
                else f"put the branch on {team.name} through the team's usual review (a first push of a reviewed "
                     f"commit: git push -u {remote} {branch}), then run again"))
        elif facts.remote_head != co.head:
            found.append(RunbookError(f"HEAD is {co.head[:12]} but {ours} is {facts.remote_head[:12]} (remote "
                                      f"{team.name}: {team.why}): the local branch is not what was merged",
                                      id="head-not-on-remote",
                                      fix=f"git pull --ff-only {shlex.quote(team.name)} "
                                          f"{shlex.quote(facts.target_branch)}  (if you are ahead, your commits were "
                                          "never merged: merge them through the usual review instead)"))
    if not facts.config_committed and not facts.rehearsal:
        real = sorted({s.account.name for s in facts.scopes if not s.account.local})
        found.append(RunbookError(
            f"The configuration {facts.config.path} is not the committed one (RUNBOOK_CONFIG points outside the "
            f"repository, at a file git does not track, or it has uncommitted changes), but this run applies to AWS "
            f"account(s) {', '.join(real)}: the record would claim this commit while the pipeline's gate reads the "
            "committed configuration; nothing was changed", id="config-not-committed",
            where=f"RUNBOOK_CONFIG={facts.config.path}" if facts.config.path.is_absolute() else str(facts.config.path),
            fix="commit the configuration and merge it into the environment's branch (or unset RUNBOOK_CONFIG to use "
                "the committed one)"))
    for scope in facts.scopes:
        try:
            scope.fingerprint(facts.trees)  # raises root-module-missing
        except RunbookError as exc:
            found.append(exc)
    tf, lock_min = facts.terraform, versions.Terraform.s3_lock_min
    if tf is not None and facts.backend.uses_lockfile and not versions.satisfies(tf.version, f">= {lock_min}"):
        found.append(RunbookError(f"Terraform {tf.version} at {tf.path} cannot lock the state with an S3 lock file: "
                                  f"terraform.backend.lock is {facts.backend.lock}, which needs Terraform "
                                  f"{lock_min} or later; nothing was changed", id="terraform-version",
                                  where="config field terraform.backend.lock",
                                  fix=f"install Terraform {lock_min} or later "
                                      "(https://developer.hashicorp.com/terraform/install) and put it first on PATH; "
                                      "or set terraform.backend.lock: dynamodb"))
    found += [RunbookError(f"The {problem}", id="module-source-unpinned", fix="pin it as the message says, commit, "
                                                                              "and run again")
              for problem in facts.unpinned]
    return found


def aws_findings(facts: Facts) -> list[RunbookError]:
    """What AWS's facts say would stop the run: another account, credentials about to expire, a backend that must
    not be created or used, a missing or newer state, another branch's account IAM (unless it may be taken over)."""
    account, identity = facts.account, facts.identity
    if identity is not None and identity.account_id != account.id:
        return [RunbookError(f"These AWS credentials are for account {identity.account_id} ({identity.arn}), but "
                             f"{facts.scopes[-1].label} lives in account {account.name} ({account.id}); nothing was "
                             "changed", id="wrong-account", where=f"config field accounts.{account.name}.id",
                             fix=f"use credentials for {account.id}: "
                             + (f"AWS_PROFILE={account.profile}" if account.profile else "switch profile or role"))]
    soon = facts.credentials.expiring(account) if facts.credentials is not None else None
    if soon is not None:
        return [soon]
    state, b, found = facts.state, facts.backend, []
    applied = [s for s in facts.scopes if needed(facts, s)[0]]
    if state is None or not applied:
        return found  # no scope is applied: the backend is not used
    if not state.key_schema_ok:
        found.append(RunbookError(
            f"The DynamoDB table {b.lock_table} is keyed {state.table_key}, but Terraform's S3 backend locks state in "
            "a table whose hash key is LockID (string): Terraform could not lock the state; nothing was applied",
            id="lock-table-wrong-key", where="config field terraform.backend.lock_table",
            fix="point terraform.backend.lock_table at another name and create that table with "
                f"`{bootstrap_command(facts)}`"))
    if not state.complete and facts.evidence:
        gone = [f"the S3 bucket {b.bucket}" if part == "bucket" else f"the DynamoDB lock table {b.lock_table}"
                for part in state.absent]
        elsewhere = sorted({d.split("/", 1)[0] for d in facts.digests} - {b.bucket})
        hint = (f"if terraform.backend.state_bucket was changed or mistyped (the lock table knows state in "
                f"{', '.join(elsewhere)}), set it back; " if elsewhere and not state.bucket_exists else
                "if a name under terraform.backend was changed or mistyped, set it back; ")
        text = " and ".join(gone)
        found.append(RunbookError(
            f"{text[0].upper()}{text[1:]} of account {account.name} ({account.id}) {'do' if len(gone) > 1 else 'does'} "
            "not exist, but this is NOT a first deploy into the account: " + "; ".join(facts.evidence) + ". Creating "
            "the backend now would plan from an empty state (Terraform would try to create IAM that exists) and hide "
            "where the state went; nothing was created, planned or applied", id="backend-missing",
            where="config fields terraform.backend.state_bucket and terraform.backend.lock_table",
            fix=hint + "if it was deleted, restore it; to create it deliberately, see what would be created and why, "
                f"then create it: {bootstrap_command(facts)} --dry-run, then {bootstrap_command(facts)}"))
    for scope in applied:
        key, record = scope.backend.key, facts.records.get(scope.name)
        where = f"s3://{scope.backend.bucket}/{key}"
        if state.bucket_exists and key not in state.states and record:
            found.append(RunbookError(
                f"{scope.label[0].upper()}{scope.label[1:]} has an applied record (commit "
                f"{str(record.get('commit', '?'))[:12]} at {record.get('applied_at', '?')}), but its configured state "
                f"{where} does not exist: Terraform would plan from an empty state and try to create IAM that exists; "
                "nothing was planned or applied", id="state-missing",
                where=f"config fields terraform.backend.{scope.kind}_state_key and terraform.backend.state_bucket",
                fix=facts.hints.get(scope.name, "restore the state object")))
        written = state.states.get(key)
        if written and facts.terraform and versions.older(facts.terraform.version, written):
            found.append(RunbookError(
                f"The state {where} was last written by Terraform {written}, but this run would use Terraform "
                f"{facts.terraform.version} ({facts.terraform.path}), which is older; nothing was planned or applied",
                id="terraform-version", where="config field terraform.required_version",
                fix=f"install Terraform {written} or later (https://developer.hashicorp.com/terraform/install) and put "
                    f'it first on PATH; pin it for the team: terraform.required_version ">= {written}"'))
    take_over = take_over_text(facts)
    if take_over and not facts.opts.take_over and (facts.opts.assume_yes or not (sys.stdin and sys.stdin.isatty())):
        scope = facts.scopes[0]
        found.append(RunbookError(
            take_over + ("; --yes does not answer this" if facts.opts.assume_yes else "") + "; nothing was changed",
            id="take-over-needed", where=f"SSM parameter {scope.parameter}",
            fix=f"agree with whoever applied from {console.one_line(str(facts.records[ACCOUNT].get('branch')))!r} "
                f"first (or merge it into {facts.checkout.branch!r}), then run the same command with --take-over"))
    return found


def needed(facts: Facts, scope: Scope) -> tuple[bool, str]:
    """Whether the run applies *scope*, and why. ``inv release`` (``only_needed``) skips a scope whose record is
    current; ``inv iam.*`` always applies (an apply of an unchanged commit confirms the state matches it)."""
    if scope.name not in facts.records or not facts.trees:  # a dry run reads no record; iam.bootstrap no commit
        return True, "decided by the applied record at run time" if facts.opts.only_needed else "requested"
    st = records.compare(scope, facts.trees, facts.records[scope.name])
    if st.state == records.CURRENT:  # a record as records.read gives it: every field is there
        who = console.one_line(st.record["applied_by"]).rsplit("/", 1)[-1]
        return not facts.opts.only_needed, f"record current: applied at {st.record['commit'][:12]} by {who}"
    return True, st.text


def take_over_text(facts: Facts) -> str | None:
    """Why applying the shared account scope replaces another branch's account IAM, or None when it does not:
    its record came from another branch with another fingerprint (record values printed safely). None without a
    commit (``iam.bootstrap`` applies nothing)."""
    scope = facts.scopes[0]
    applied = facts.records.get(ACCOUNT) if scope.name == ACCOUNT else None
    if not applied or not facts.trees or applied.get("branch") == facts.checkout.branch or not needed(facts, scope)[0]:
        return None
    ours = scope.fingerprint(facts.trees)
    if applied.get("fingerprint") == ours:
        return None
    sharing = [e.name for e in facts.config.environments.values() if e.account == scope.account]
    shown = {k: console.one_line(str(applied.get(k, "?")))[:200] for k in
             ("branch", "commit", "fingerprint", "applied_by", "applied_at")}
    return (f"The account scope {scope.label} is shared by {', '.join(sharing)}. It was last applied from branch "
            f"{shown['branch']!r} (commit {shown['commit'][:12]}, fingerprint {shown['fingerprint'][:12]}) by "
            f"{shown['applied_by']} at {shown['applied_at']}. This commit on {facts.checkout.branch!r} has another "
            f"fingerprint ({ours[:12]}): applying it replaces that account IAM, reverting whatever it has that this "
            "commit lacks")


def backend_action(facts: Facts) -> Action:
    """What the backend needs: nothing (verified, or unused), creating (a true first deploy), repairing, or waiting."""
    b, state = facts.backend, facts.state
    lock = (f"DynamoDB lock table {b.lock_table} (hash key LockID, string)" if b.uses_table else
            f"state lock: S3 lock file s3://{b.bucket}/{b.lock_object} (use_lockfile; no DynamoDB table)")
    lines = (f"S3 bucket {b.bucket} (versioned, encrypted, public access blocked), key {b.key}", lock)
    title = "Backend: state bucket and lock table"
    if state is None:
        return Action("backend", title, "verified at run time (versioning, encryption, public access block, lock "
                                        "table keyed LockID); created only on a true first deploy into the account, "
                                        f"otherwise `{bootstrap_command(facts)}`", lines=lines)
    if not any(needed(facts, s)[0] for s in facts.scopes):
        return Action("backend", title, "no IAM step is needed, so the backend is not used", needed=False)
    words = f"bucket {b.bucket} and table {b.lock_table} exist" if b.uses_table else \
        f"bucket {b.bucket} exists (state locked with S3 lock files, no lock table)"
    if state.verified:
        table = "; lock table keyed LockID" if b.uses_table else ""
        return Action("backend", title, f"{words} (verified: versioned, encrypted, public access blocked{table})",
                      lines=lines, needed=False)
    if not state.complete:  # with evidence, only iam.bootstrap gets here (a run stops at backend-missing)
        why = (f"NOT a first deploy into account {facts.account.id} (see below): the {' and '.join(state.absent)} "
               "must be created again" if facts.evidence else f"first deploy into account {facts.account.id} (no "
               f"applied record, no state digest, no state): the {' and '.join(state.absent)} must be created")
        return Action("backend", title, why, lines=lines)
    todo = [f"the bucket lacks {', '.join(state.missing)}: switch it on"] if state.missing else []
    todo += [f"the lock table is {state.table_status} (another run is creating it): wait for it"] \
        if not state.table_ready else []
    return Action("backend", title, "; ".join(todo), lines=lines)


def actions(facts: Facts) -> list[Action]:
    """The ordered actions of the run: the backend, taking over the shared account scope where needed, then per
    scope plan, confirm, apply and record (shown as skipped when the scope needs nothing)."""
    todo = [backend_action(facts)]
    take_over = take_over_text(facts)
    if take_over:
        given = "--take-over given: " if facts.opts.take_over else ""
        todo.append(Action("take-over", "Shared account scope: take over", given + take_over, facts.scopes[0]))
    for scope in facts.scopes:
        is_needed, why = needed(facts, scope)
        snap = facts.snapshots.get(scope.name)
        where = f"$ cd {shlex.quote(str(snap.root))} && bash {shlex.quote(str(snap.script))}" if snap else ""
        env_line = "  env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in console.mask_env(terraform.script_env(
            scope.backend, mode="plan", tf_vars=scope.tf_vars(), lock_timeout_s=facts.opts.lock_timeout_s)).items())
        keys = ("  credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN = the keys that pass the "
                "caller identity check; every other credential source, TF_WORKSPACE, TF_DATA_DIR, TF_CLI_ARGS*, "
                "TF_VAR_*, TF_REATTACH_PROVIDERS, TF_LOG* and AWS_ENDPOINT_URL* of this shell are removed")
        env = facts.environment
        confirm = (f"environment {env.name} is protected (--yes answers it)" if env.protected else
                   "asked only if the plan destroys anything (--yes answers it)")
        steps = (("plan", "Terraform: plan", f"{why}: show what would change in {scope.label} before anything changes",
                  (f"{where}   (in the snapshot of commit {facts.checkout.head[:12]})", env_line, keys)
                  if where else ()),
                 ("confirm", "Confirm", confirm, ()),
                 ("apply", "Terraform: apply the saved plan",
                  "apply exactly the plan file just shown (what was reviewed is what is applied)",
                  (f"{where}   (DEPLOY_MODE=apply)",) if where else ()),
                 ("record", "Record what was applied", "the pipeline's IAM gate and `inv iam.status` compare this "
                                                       "commit with the record (written only after apply exited 0)",
                  (f"SSM PutParameter {scope.parameter} (account {scope.account.id}): fingerprint, tree ids, commit, "
                   "branch, caller identity ARN, UTC time, outputs",)))
        todo += [Action(kind, f"{title} ({scope.label})", reason if is_needed else why, scope, lines, is_needed)
                 for kind, title, reason, lines in steps]
    return todo


def confirm_reasons(facts: Facts, destroy: int) -> list[str]:
    """Why the apply must be confirmed: a protected environment, a plan that destroys resources (empty: no need)."""
    why = [f"environment {facts.environment.name} is protected"] if facts.environment.protected else []
    return why + ([f"the plan destroys {destroy} resource(s)"] if destroy else [])
