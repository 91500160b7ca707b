"""Act: examine, decide, then act, then examine again to verify (``inv iam.account``, ``inv iam.env``, the IAM part
of ``inv release``, and ``inv iam.bootstrap``). Each scope is planned, confirmed, applied and recorded in its
snapshot of the commit; a dry run prints the same facts, actions and findings and changes nothing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from runbook import aws, backend, console, decide, git, records, snapshot, terraform
from runbook.config import PROJECT_ROOT, Config, Environment
from runbook.decide import Action
from runbook.errors import EXIT_WOULD_STOP, Interrupted, RunbookError
from runbook.facts import Facts, Options, examine_aws, examine_local
from runbook.scopes import DEPLOY_SCRIPT, Scope, account_scopes


@dataclass
class Outcome:
    """What happened to one action of a real run: "done", "skipped" or "failed", and how long it took (seconds)."""

    title: str
    status: str
    seconds: float


@dataclass
class Run:
    """One real run's progress: its facts, the plans made, the outcomes (for the summary), the resume command, the
    records this run wrote and read back (scope name -> record) and its states' S3 versions after each apply."""

    facts: Facts
    command: str
    plans: dict[str, terraform.PlanSummary] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    records: dict[str, dict | None] = field(default_factory=dict)
    applied: dict[str, str | None] = field(default_factory=dict)

    def summary(self) -> None:
        """Print one line per action that ran: done, skipped or failed, and its duration in seconds."""
        for outcome in self.outcomes:
            console.say(f"  {outcome.status:<8} {outcome.seconds:6.1f} s  {outcome.title}")


def run(config: Config, environment: Environment, scopes: list[Scope], opts: Options, *, command: str,
        before_aws=None, checkout: git.Checkout | None = None, then: str = "") -> Run | DryRun:
    """Apply *scopes* (in order) for *environment*'s branch; with ``opts.dry_run``, print them and return a
    :class:`DryRun` instead (its :meth:`DryRun.check` gives the exit).

    *command* is the command line that resumes the run (the user's own, with their flags); *before_aws*, when
    given, is called with the local facts before any AWS call (``inv release`` checks its CircleCI token there);
    *checkout*, when given, is the checkout the caller inspected (so that ``git status`` runs once per run);
    *then*, what a dry run says comes after the IAM steps (``inv release``: the pipeline).
    Raises RunbookError at the first finding, before anything changes, or at the first failure of an action,
    naming what was and was not done and the command that resumes; Interrupted on Ctrl-C.
    """
    console.heading(f"IAM for {' and '.join(s.label for s in scopes)}: examining")
    facts = examine_local(config, environment, scopes, opts, command, checkout)
    findings = decide.local_findings(facts)
    if opts.dry_run:
        return dry_run(facts, findings, command, then)
    _raise_first(findings, command)
    if before_aws is not None:
        before_aws(facts)
    _warn_other_credentials(facts)
    try:
        facts = examine_aws(facts, aws.session(facts.account))
    except RunbookError as exc:  # a look-up that failed (credentials, AWS down): nothing changed yet
        _raise_first([exc], command)
    _raise_first(decide.aws_findings(facts), command)
    return perform(Run(facts, command), decide.actions(facts))


def _raise_first(findings: list[RunbookError], command: str) -> None:
    if findings:
        first = findings[0]
        first.fix = with_resume(first.fix, command)
        raise first


@dataclass(frozen=True)
class DryRun:
    """What a dry run found: the actions a real run would take (:class:`runbook.decide.Action`), the findings that
    would stop it (RunbookErrors) and the command that runs it for real."""

    actions: list[Action]
    findings: list[RunbookError]
    command: str

    def check(self) -> None:
        """Raise the ``dry-run-findings`` RunbookError (exit :data:`runbook.errors.EXIT_WOULD_STOP`) when a finding
        would stop the real run; return when it would go ahead."""
        if self.findings:
            ids = ", ".join(dict.fromkeys(exc.id for exc in self.findings))
            raise RunbookError(f"The dry run found {len(self.findings)} finding(s) that would stop a real run ({ids}; "
                               "listed above): nothing was done", id="dry-run-findings", code=EXIT_WOULD_STOP,
                               fix=f"fix them as each says, then run it again: {self.command} --dry-run")

    def document(self, verbose: bool = False) -> dict:
        """The dry run as ``--json`` prints it (format 1, README "JSON output"): ``would_stop``, the actions, the
        findings. Without *verbose*, an action's ``env:`` and ``credentials:`` lines are left out, as on screen."""
        return {"format": 1, "command": self.command, "would_stop": bool(self.findings),
                "actions": [{"kind": a.kind, "title": a.title, "needed": a.needed, "reason": a.reason,
                             "lines": [line for line in a.lines if verbose or not _detail(line)]}
                            for a in self.actions],
                "findings": [{"id": e.id, "what": e.what, "where": e.where, "fix": e.fix} for e in self.findings]}


def _detail(line: str) -> bool:
    """Whether a dry run's line is one that only ``--verbose`` shows: a step's environment or credentials."""
    return line.lstrip().startswith(("env:", "credentials:"))


def dry_run(facts: Facts, findings: list[RunbookError], command: str, then: str = "") -> DryRun:
    """Print every action, why, and its exact commands, then *then*, then every finding that would stop a real
    run; return them as a :class:`DryRun`."""
    todo = decide.actions(facts)
    console.heading(f"Dry run: IAM for {facts.scopes[-1].label} ({len(todo)} actions). Nothing is changed; AWS and "
                    "Terraform are not called.")
    hidden = 0
    for number, action in enumerate(todo, 1):
        console.say(f"[{number}] {'run ' if action.needed else 'skip'} {action.title}: {action.reason}")
        for line in action.lines:
            if not facts.opts.verbose and _detail(line):
                hidden += 1
                continue
            console.say(f"      {line}")
    if hidden:
        console.say("      (--verbose shows each Terraform step's environment and credentials)")
    if then:
        console.say(then)
    console.say()
    if findings:
        console.warn(f"{len(findings)} finding(s) would stop a real run; fix them first:")
        for exc in findings:
            console.say(f"   - [{exc.id}] {exc.message}")
    else:
        console.ok("No finding would stop a real run (the AWS identity, the backend and the records are checked at "
                   "run time).")
        console.say(f"To run it for real: {command}")
    return DryRun(todo, findings, command)


def perform(state: Run, todo: list[Action]) -> Run:
    """Perform *todo* in order; stop at the first failure. Raises RunbookError (with the resume command added to
    its fix) or Interrupted; actions before the failure keep their effects, actions after it are not started."""
    for number, action in enumerate(todo, 1):
        started, status = time.monotonic(), "failed"
        console.heading(f"[{number}/{len(todo)}] {action.title}")
        try:
            if action.needed:
                console.say(f"  why: {action.reason}")
                detail = ACT[action.kind](state, action)
            else:
                console.ok(f"skipped: {action.reason}")
                detail = None
            status = "skipped" if detail is None else "done"
        except RunbookError as exc:
            exc.fix = with_resume(exc.fix, state.command, interrupted=isinstance(exc, Interrupted))
            raise
        except KeyboardInterrupt:
            left = (f"; the IAM of {action.scope.label} WAS applied, and its record may or may not be written "
                    f"(`inv iam.status` shows which; `{state.command}` records it)" if action.kind == "record" else "")
            raise Interrupted(f"Interrupted at step {number}/{len(todo)} ({action.title}); the steps before it are "
                              f"complete and nothing after it started{left}", fix=state.command) from None
        finally:
            state.outcomes.append(Outcome(action.title, status, time.monotonic() - started))
        if detail is not None:
            console.ok(detail)
    return state


_AGAIN = re.compile(r"\brun (?:(?:the same |the )?command |it )?again\b", re.IGNORECASE)


def with_resume(fix: str | None, resume: str, *, interrupted: bool = False) -> str:
    """*fix* with the resume command in it once: "run the same command again" becomes the exact command; any other
    fix gets it appended."""
    then = f"resume with `{resume}`" if interrupted else f"then resume with `{resume}`"
    if not fix:
        return then[0].upper() + then[1:]
    if resume in fix:
        return fix
    named, count = _AGAIN.subn(f"resume with `{resume}`", fix, count=1)
    if count:
        return "R" + named[1:] if named.startswith("resume with") else named
    return f"{fix}; {then}"


def _act_backend(state: Run, action: Action) -> str:
    facts, sess = state.facts, state.facts.session
    account, b, found = facts.account, facts.backend, facts.state
    done = []
    if not found.complete or not found.table_ready:
        done += backend.create(sess, account, b, found)
    if found.bucket_exists and found.missing:
        done.append(f"the state bucket {b.bucket} lacked {', '.join(backend.repair(sess, account, b, found.missing))}: "
                    "repaired (switched on)")
    after = backend.look(sess, account, b, [s.backend.key for s in facts.scopes if s.backend.bucket == b.bucket])
    verify_backend(facts, after)
    state.facts = replace(facts, state=after)
    return "; ".join(done)


def verify_backend(facts: Facts, after: backend.BackendState) -> None:
    """Raise (``backend-incomplete``) unless *after*, the backend looked at again after changing it, is verified."""
    if after.verified:
        return
    b = facts.backend
    gaps = [f"S3 bucket {b.bucket}" if part == "bucket" else f"DynamoDB table {b.lock_table}" for part in after.absent]
    gaps += [f"the bucket's {name}" for name in after.missing]
    gaps += [f"the lock table is {after.table_status}"] if after.table_exists and not after.table_ready else []
    gaps += ["the lock table's key is not LockID (string)"] if not after.key_schema_ok else []
    raise RunbookError(f"The Terraform backend is still not complete after creating it ({', '.join(gaps)}); nothing "
                       "was planned or applied", id="backend-incomplete",
                       fix=f"see what is missing and why: {decide.bootstrap_command(facts)} --dry-run")


def _act_take_over(state: Run, action: Action) -> str:
    if state.facts.opts.take_over:
        console.warn("TAKING OVER the shared account scope (--take-over): "
                     + action.reason.removeprefix("--take-over given: "))
        return "taken over (--take-over)"
    console.warn(action.reason)
    if not console.confirm("Take over the account scope and replace that IAM?"):
        raise RunbookError("Not taken over: nothing was changed", id="not-confirmed",
                           fix=f"{state.command} --take-over, once whoever applied it agrees")
    return "taken over (answered yes)"


def _script(facts: Facts, scope: Scope, mode: str, snap: snapshot.Snapshot | None = None) -> None:
    """Run *scope*'s deploy-app.sh in *mode* in its snapshot (*snap*: another snapshot, ``iam.drift``'s)."""
    env = terraform.script_env(scope.backend, mode=mode, tf_vars=scope.tf_vars(), terraform_bin=facts.terraform.path,
                               terraform_version=facts.terraform.version, credentials=facts.credentials,
                               lock_timeout_s=facts.opts.lock_timeout_s)
    snap = snap or facts.snapshots[scope.name]
    terraform.run_script(snap.root, snap.script, env, what=f"{mode} {'to' if mode == 'apply' else 'of'} {scope.label}",
                         environment=facts.environment.name)


def _act_plan(state: Run, action: Action) -> str:
    scope = action.scope
    _script(state.facts, scope, "plan")
    summary = terraform.read_plan(state.facts.snapshots[scope.name].root)
    problem = _record(state, scope, summary).size_problem()
    if problem:
        terraform.discard_plan(state.facts.snapshots[scope.name].root)
        raise RunbookError(f"Not applying: {problem}, so the apply could never be recorded and the pipeline's gate "
                           "would never open; nothing was applied", id="record-too-large", where=scope.parameter,
                           fix=f"output less from {scope.root} (the record keeps {', '.join(RECORDED_OUTPUTS)} only), "
                               "commit, and run again")
    state.plans[scope.name] = summary
    return f"Plan: {summary}"


def _act_confirm(state: Run, action: Action) -> str | None:
    summary = state.plans[action.scope.name]
    why = decide.confirm_reasons(state.facts, summary.destroy)
    if not why:
        console.ok("not needed: not protected and nothing is destroyed")
        return None
    console.say(f"  because {' and '.join(why)}")
    if not console.confirm(f"Apply this plan to {action.scope.label} ({summary})?",
                           assume_yes=state.facts.opts.assume_yes):
        raise RunbookError(f"Not confirmed: nothing was applied to {action.scope.label}", id="not-confirmed",
                           fix="run the same command again and answer y, after reading the plan")
    return "confirmed"


def _act_apply(state: Run, action: Action) -> str:
    soon = state.facts.credentials.expiring(action.scope.account)  # again: a confirmation may have taken long
    if soon is not None:
        raise soon
    summary = state.plans[action.scope.name]
    if summary.empty:
        console.say("  the plan has no changes; applying it confirms the state matches this commit")
    _script(state.facts, action.scope, "apply")
    state.applied[action.scope.name] = backend.state_tag(state.facts.session, action.scope.account,
                                                         action.scope.backend)
    return f"applied to {action.scope.label}: {summary}"


RECORDED_OUTPUTS = ("lambda_role_names", "deployer_user_name")


def _record(state: Run, scope: Scope, summary: terraform.PlanSummary) -> records.Record:
    facts = state.facts
    outputs = {k: v for k, v in (summary.outputs or {}).items() if k in RECORDED_OUTPUTS}
    return records.Record.create(fingerprint=scope.fingerprint(facts.trees), commit=facts.checkout.head,
                                 branch=facts.checkout.branch or facts.environment.branch,
                                 applied_by=facts.identity.arn, scope=scope.name, trees=scope.trees(facts.trees),
                                 inputs=scope.inputs_digest(), outputs=outputs)


def _act_record(state: Run, action: Action) -> str:
    """Write the record, read it back, then check that no other apply wrote the state since this run's apply (its S3
    version): a record written late (a slow network, a laptop asleep) must not name this commit over a newer apply.
    Runs only after the apply exited 0, so each failure says that the IAM WAS applied, whether the record was
    written, and that running the same command again plans, applies what is missing and writes the record."""
    scope, facts = action.scope, state.facts
    record = _record(state, scope, state.plans[scope.name])
    ssm = aws.client(facts.session, "ssm", scope.account)
    again = (f"run `{state.command}` again: it plans against the state as it is now, applies what is missing (an "
             "empty plan changes nothing in IAM) and writes the record")
    name, written = scope.parameter, "no"
    try:
        records.write(ssm, name, record, scope.account)
        written = "yes"
        back = records.read(ssm, name, scope.name, scope.account)
        if back is None or back.get("fingerprint") != record.fingerprint:
            raise RunbookError(f"Reading {name} back gave another record (another run wrote it at the same moment?)",
                               id="record-write-contended", where=name)
        if backend.state_tag(facts.session, scope.account, scope.backend) != state.applied.get(scope.name):
            written = "stale"
            aws.call("deleting the applied record", f"SSM parameter {name}", scope.account,
                     lambda: ssm.delete_parameter(Name=name), permission=f"ssm:DeleteParameter on {name}")
            written = "deleted"
            raise RunbookError(f"Another apply wrote the state of {scope.label} (s3://{scope.backend.bucket}/"
                               f"{scope.backend.key}) after this run's apply, so the IAM in AWS may not be commit "
                               f"{record.commit[:12]}'s: the record this run wrote is deleted, so that no gate opens "
                               "on it", id="record-write-contended", where=name)
        state.records[scope.name] = back
    except RunbookError as exc:
        waiting = "so `inv iam.status` shows it as not current and the pipeline's IAM gate keeps waiting"
        done = {"no": f"its applied record was NOT written to SSM parameter {name}, {waiting}",
                "deleted": f"its applied record was deleted again from SSM parameter {name}, {waiting}",
                "yes": f"it was written to SSM parameter {name}, but could not be verified, so trust `inv iam.status`, "
                       "not this run",
                "stale": f"its record in SSM parameter {name} names commit {record.commit[:12]}, but another apply "
                         "wrote the state after this run's, so that may not be what is applied, and deleting the "
                         "record failed: delete it with " + aws.aws_command(scope.account, "ssm", "delete-parameter",
                                                                            "--name", name)}[written]
        raise RunbookError(
            f"The IAM of {scope.label} WAS applied (terraform apply exited 0); {done}. Why: {exc.what.rstrip('.')}",
            id="applied-not-recorded", where=exc.where,
            fix=f"{exc.fix.rstrip(' ;,.')}; then {again}" if exc.fix else again[0].upper() + again[1:],
            code=exc.code) from exc
    return f"{scope.parameter} = {record.fingerprint[:12]}... at {record.commit[:12]} (read back)"


ACT = {"backend": _act_backend, "take-over": _act_take_over, "plan": _act_plan, "confirm": _act_confirm,
       "apply": _act_apply, "record": _act_record}


# What stops an apply but not a read-only plan: where it runs from, who applied the account scope before, and keys
# too close to their expiry for an apply.
_APPLY_ONLY = frozenset({"wrong-branch", "head-not-on-remote", "take-over-needed", "credentials-expiring"})


def _examine_read_only(config: Config, environment: Environment, scopes: list[Scope], command: str,
                       checkout: git.Checkout | None, title: str) -> Facts:
    """The facts of a read-only run (:func:`preview`, :func:`drift`): as a real run examines them, stopping at the
    findings that matter when nothing is applied (all but :data:`_APPLY_ONLY`)."""
    console.heading(f"{title} {' and '.join(s.label for s in scopes)}: examining")
    facts = examine_local(config, environment, scopes, Options(read_only=True), command, checkout)
    _raise_first([f for f in decide.local_findings(facts) if f.id not in _APPLY_ONLY], command)
    facts = examine_aws(facts, aws.session(facts.account))
    _raise_first([f for f in decide.aws_findings(facts) if f.id not in _APPLY_ONLY], command)
    return facts


def preview(config: Config, environment: Environment, scopes: list[Scope], command: str,
            checkout: git.Checkout | None = None) -> list[tuple[Scope, str, bool]]:
    """``inv iam.plan``: a read-only Terraform plan of each of *scopes* whose applied record does not match this
    commit, against *environment*'s state, from any branch. No state lock (``-lock=false``), no record, no backend
    created or repaired, nothing changed in AWS; the saved plan is deleted once summarised.

    Returns, per scope: the scope, what it would do in words, and whether that changes anything (a current
    record: nothing planned; an account without a backend yet: a first deploy creates everything, not planned).
    Raises RunbookError for what would make the plan meaningless (the configuration, the backend gone,
    credentials) and when Terraform fails.
    """
    facts = _examine_read_only(config, environment, scopes, command, checkout, "IAM plan (read-only) for")
    found: list[tuple[Scope, str, bool]] = []
    for scope in scopes:
        status = records.compare(scope, facts.trees, facts.records.get(scope.name))
        if status.state == records.CURRENT:
            found.append((scope, "current (its record matches this commit): nothing to plan", False))
        elif facts.state is not None and not facts.state.bucket_exists:
            found.append((scope, f"never applied, and account {facts.account.id} has no backend yet: the first apply "
                                 f"creates the backend and every resource of {scope.root}", True))
        else:
            console.heading(f"Terraform: plan of {scope.label} ({status.text}), without the state lock")
            root = facts.snapshots[scope.name].root
            try:
                _script(facts, scope, "preview")
                summary = terraform.read_plan(root)
            finally:  # nothing can be applied from it: it goes, whatever happened
                terraform.discard_plan(root)
            found.append((scope, str(summary), not summary.empty))
        (console.warn if found[-1][2] else console.ok)(f"{scope.label}: {found[-1][1]}")
    return found


def drift(config: Config, environment: Environment, scopes: list[Scope], command: str,
          checkout: git.Checkout | None = None) -> dict[str, list[str]]:
    """``inv iam.drift``: plan each applied one of *scopes* at the commit its record names, read-only (as
    :func:`preview`), and list what AWS holds that the code does not say: someone changed the IAM by hand.

    Returns scope label -> the differing resources (:func:`runbook.terraform.differences`; empty: none). Raises
    RunbookError when it cannot tell: a scope never applied, its commit not in this clone, Terraform failing.
    """
    facts = _examine_read_only(config, environment, scopes, command, checkout, "IAM drift (read-only) of")
    found = {}
    for scope in scopes:
        record = facts.records.get(scope.name)
        if record is None:
            raise RunbookError(f"{scope.label} was never applied: there is no applied commit to compare AWS with",
                               id="drift-unknown", where=f"SSM parameter {scope.parameter}",
                               fix=f"apply it first: {scope.command(environment)}")
        commit = str(record.get("commit") or "")
        try:
            trees = git.trees(commit, scope.paths, PROJECT_ROOT) if re.fullmatch(r"[0-9a-f]{40}", commit) else {}
        except RunbookError:
            trees = {}
        if not trees.get(scope.root):
            raise RunbookError(f"{scope.label} was applied from commit {console.one_line(commit)[:40]!r}, which this "
                               f"clone does not have, or which has no folder {scope.root} (the root module the "
                               "configuration names now)", id="drift-unknown", where=f"SSM parameter {scope.parameter}",
                               fix="git fetch --all, then run the same command again; after moving a root module, "
                                   f"apply it once first: {scope.command(environment)}")
        if record.get("inputs") != scope.inputs_digest():
            console.warn(f"The configuration's inputs of {scope.label} changed since commit {commit[:12]} was applied: "
                         "some differences below may come from that, not from a change by hand.")
        console.heading(f"Terraform: plan of {scope.label} at its applied commit {commit[:12]}, without the state lock")
        snap = snapshot.take(scope, commit, scope.trees(trees))
        # this checkout's deploy-app.sh, which knows the preview mode (an older commit's may not)
        git.export(facts.checkout.head, [str(Path(DEPLOY_SCRIPT).parent)], snap.path, PROJECT_ROOT)
        try:
            _script(facts, scope, "preview", snap)
            found[scope.label] = terraform.differences(snap.root)
        finally:
            terraform.discard_plan(snap.root)
        console.ok(f"{scope.label}: {len(found[scope.label]) or 'no'} difference(s) from commit {commit[:12]}")
    return found


def _warn_other_credentials(facts: Facts) -> None:
    """Say so when the shell exports credentials that the configured profile overrides."""
    profile = facts.account.profile
    exported = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE") if os.environ.get(name)
                and not (name == "AWS_PROFILE" and os.environ[name] == profile)] if profile else []
    if exported:
        console.warn(f"accounts.{facts.account.name}.profile is {profile!r} and {' and '.join(exported)} "
                     f"{'is' if len(exported) == 1 else 'are'} exported: the runbook uses profile {profile!r} for the "
                     "caller identity check and hands Terraform exactly those credentials; the exported "
                     f"{'ones are' if len(exported) > 1 else 'one is'} not used (unset it to silence this).")


def bootstrap(config: Config, environment: Environment, *, dry_run: bool = False,
              assume_yes: bool = False) -> list[str]:
    """``inv iam.bootstrap``: create or repair the Terraform backend of *environment*'s account explicitly.

    Examine as a run does (the caller identity, the backend, the records of every scope in the account and, when
    the backend is incomplete, the signs of an earlier deploy), show each action and why, warn when this is not a
    first deploy, ask (*assume_yes* answers), act, then look again to prove the backend is complete and verified.
    With *dry_run* only the read-only look-ups are made. Returns what was done, one line each. Raises RunbookError
    for credentials of another account, a lock table with the wrong key, a refused confirmation, an AWS error.
    """
    account = environment.account
    facts = examine_aws(Facts(config, environment, tuple(account_scopes(config, account)), Options(),
                              git.Checkout(None, "", ()), {}), aws.session(account))
    for found in decide.aws_findings(facts):
        if found.id in ("wrong-account", "lock-table-wrong-key"):
            raise found
    b, state = facts.backend, facts.state
    stale = [d for d in facts.digests if d.startswith(f"{b.bucket}/")] if not state.bucket_exists else []
    todo = ([decide.backend_action(facts).reason] if not state.verified else []) + (
        [f"remove {len(stale)} state digest(s) of {b.bucket} from {b.lock_table} ("
         + ", ".join(f"s3://{console.one_line(d)}" for d in stale[:5]) + "): the new bucket holds no state, and "
         "Terraform refuses a state whose digest does not match"] if stale else [])
    if not todo:
        console.ok(f"Nothing to do: the backend of account {account.name} is complete and verified (versioned, "
                   f"encrypted, public access blocked{'; lock table keyed LockID' if b.uses_table else ''}).")
        return []
    console.say(f"Backend of account {account.name} ({account.id}), region {account.region}:")
    for line in todo:
        console.say(f"  - {line}")
    if facts.evidence:
        console.warn("This is NOT a first deploy into the account: " + "; ".join(facts.evidence) + ".")
    if facts.evidence and not state.bucket_exists:
        console.warn("State that lived in a deleted bucket does not come back: afterwards each scope that has a record "
                     "but no state is refused until its state is restored (the refusal names the commands).")
    command = decide.bootstrap_command(facts)
    if dry_run:
        console.say(f"\nDry run: nothing was changed. To do it: {command}")
        return []
    if not console.confirm(f"Create or repair the backend of account {account.name} ({account.id}) as listed?",
                           assume_yes=assume_yes):
        raise RunbookError("Not confirmed: nothing was created or changed", id="not-confirmed",
                           fix=f"run `{command}` again and answer y, after reading the list")
    run = Run(facts, command)
    done = [line for line in _act_backend(run, None).split("; ") if line]
    if stale:
        backend.forget_digests(facts.session, account, b, stale)
        console.warn(f"Removed {len(stale)} state digest(s) of the re-created bucket {b.bucket} from {b.lock_table}")
    console.ok(f"The backend of account {account.name} ({account.id}) is ready: bucket {b.bucket}, {b.lock_text}.")
    return done
