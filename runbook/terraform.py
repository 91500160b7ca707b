"""The Terraform runner: runs ``deploy-app.sh`` in a scope's snapshot, names its failures, reads the plan.

Terraform only ever runs inside ``iam/terraform/bin/deploy-app.sh`` (the script an administrator can run by
hand); this module gives it its environment, streams its output, forwards Ctrl-C to it once, names its failures
through one table (:data:`FAILURES`) and reads the plan's JSON (``terraform show -json``,
https://developer.hashicorp.com/terraform/internals/json-format).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook import console
from runbook.backend import LockInfo
from runbook.config import Backend
from runbook.errors import EXIT_LOCKED, Interrupted, RunbookError
from runbook.scopes import DEPLOY_SCRIPT

PLAN_FILE = ".terraform/runbook.tfplan"


@dataclass(frozen=True)
class PlanSummary:
    """What a saved plan does: resources to add, change, destroy; outputs that change; the planned output values
    (name -> value, sensitive ones left out) that the applied record keeps."""

    add: int
    change: int
    destroy: int
    outputs_changed: int = 0
    outputs: Any = None

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.destroy or self.outputs_changed)

    def __str__(self) -> str:
        text = f"{self.add} to add, {self.change} to change, {self.destroy} to destroy"
        return text + (f"; {self.outputs_changed} output(s) change" if self.outputs_changed else "")


def _plan_json(root: Path) -> dict:
    """The plan JSON that the script's ``plan`` (or ``preview``) mode wrote in *root*. Raises RunbookError when
    absent or unreadable."""
    path = root / (PLAN_FILE + ".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunbookError(f"The plan summary {path} is missing or unreadable", id="plan-failed",
                           fix="run the same command again; deploy-app.sh writes it in plan mode") from exc


def read_plan(root: Path) -> PlanSummary:
    """Summarise the plan JSON that the script's ``plan`` mode wrote in *root*. Raises RunbookError when absent."""
    plan = _plan_json(root)
    actions = [rc.get("change", {}).get("actions", []) for rc in plan.get("resource_changes", [])]
    return PlanSummary(sum("create" in a for a in actions), sum(a == ["update"] for a in actions),
                       sum("delete" in a for a in actions),
                       sum(o.get("actions") != ["no-op"] for o in plan.get("output_changes", {}).values()),
                       {k: o.get("value") for k, o in plan.get("planned_values", {}).get("outputs", {}).items()
                        if not o.get("sensitive")})


def differences(root: Path) -> list[str]:
    """What the saved plan in *root* would change, one line per resource: its address, the action, and for an update
    the attributes whose planned value differs from what AWS holds now (the plan's JSON ``resource_changes``:
    https://developer.hashicorp.com/terraform/internals/json-format#change-representation). Raises RunbookError
    when the plan JSON is missing or unreadable."""
    found = []
    for rc in _plan_json(root).get("resource_changes", []):
        change = rc.get("change", {})
        actions = [a for a in change.get("actions", []) if a not in ("no-op", "read")]
        if not actions:
            continue
        before, after = change.get("before") or {}, change.get("after") or {}
        keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                      and not (change.get("after_unknown") or {}).get(k)) if actions == ["update"] else []
        found.append(f"{rc.get('address')}: {'/'.join(actions)}" + (f" ({', '.join(keys)})" if keys else ""))
    return found


# Every variable through which the AWS SDK in Terraform could pick credentials other than the ones handed over, or
# Terraform a workspace, data folder, arguments or inputs other than the runbook's
# (https://docs.aws.amazon.com/sdkref/latest/guide/settings-reference.html#EVarSettings,
# https://developer.hashicorp.com/terraform/cli/config/environment-variables); the shared files and the instance
# metadata service are shut.
CHILD_REMOVED = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "TF_WORKSPACE", "TF_DATA_DIR", "TF_REATTACH_PROVIDERS",
    "AWS_S3_ENDPOINT", "AWS_DYNAMODB_ENDPOINT", "AWS_STS_ENDPOINT", "AWS_IAM_ENDPOINT",
)
# TF_LOG*: Terraform's debug log shows each request's headers, the session token among them.
CHILD_REMOVED_PREFIXES = ("TF_CLI_ARGS", "TF_VAR_", "AWS_ENDPOINT_URL", "TF_LOG")
CHILD_SHUT = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
              "AWS_EC2_METADATA_DISABLED": "true"}


def script_env(backend: Backend, *, mode: str, tf_vars: dict[str, str], terraform_bin: str | None = None,
               terraform_version: str | None = None, credentials: Any = None,
               lock_timeout_s: float = 0.0) -> dict[str, str]:
    """The variables ``deploy-app.sh`` reads (its header documents them) and the credentials Terraform must use:
    *credentials* (``runbook.aws.Credentials``, the frozen keys that passed the caller identity check) become
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``; *lock_timeout_s* is in seconds."""
    env = {"DEPLOY_MODE": mode, "TF_STATE_BUCKET": backend.bucket, "TF_STATE_KEY": backend.key,
           "TF_LOCK_MODE": backend.lock, "AWS_REGION": backend.region, "TF_PLAN_FILE": PLAN_FILE,
           "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    optional = {"TF_LOCK_TABLE": backend.lock_table if backend.uses_table else None,
                "AWS_ENDPOINT_URL": backend.endpoint_url, "TERRAFORM_VERSION": terraform_version,
                "TERRAFORM_BIN": terraform_bin, "TF_LOCK_TIMEOUT": f"{lock_timeout_s:.3f}".rstrip("0").rstrip(".") + "s"
                if lock_timeout_s else None,
                "TF_CLI_ARGS": "-no-color" if not sys.stdout.isatty() or os.environ.get("NO_COLOR") else None}
    env.update({k: v for k, v in optional.items() if v})
    env.update(credentials.env() if credentials is not None else {})
    return {**env, **{f"TF_VAR_{k}": v for k, v in tf_vars.items()}}


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The whole environment of ``deploy-app.sh``: ``os.environ`` without :data:`CHILD_REMOVED` and
    :data:`CHILD_REMOVED_PREFIXES`, with :data:`CHILD_SHUT`, then *env*. Without credentials in *env* Terraform
    finds none and stops at ``init``: it never falls back to another identity."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in CHILD_REMOVED and not k.startswith(CHILD_REMOVED_PREFIXES)}
    return {**inherited, **CHILD_SHUT, **env}


def run_script(root: Path, script: Path, env: dict[str, str], *, what: str, environment: str | None = None) -> None:
    """Run *script* (``deploy-app.sh``) in the root module folder *root* with *env*, streaming its output.

    The script runs in its own process group, so a Ctrl-C at the terminal reaches only this process, which
    forwards one SIGINT: Terraform stops cleanly and releases its state lock. A second Ctrl-C only warns (a second
    SIGINT makes Terraform exit at once, lock held); a third is forwarded. The task layer turns SIGTERM and SIGHUP
    into the same KeyboardInterrupt. The output is read to the end even when our own output has gone (a Go program
    writing to a closed pipe dies of SIGPIPE, lock held). The saved plan (sensitive values in clear) is deleted
    after an apply and after a failed or interrupted plan.

    Raises Interrupted on Ctrl-C, and the error of :func:`failure` when the script exits non-zero (*environment*:
    the environment the run is for, which the unlock command of an account scope's lock names).
    """
    mode = env.get("DEPLOY_MODE")
    console.write(sys.stdout, "")
    started = time.time()
    proc = subprocess.Popen(["bash", os.path.relpath(script, root)], cwd=root, env=child_env(env),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pumps = [_Pump(proc.stdout, sys.stdout), _Pump(proc.stderr, sys.stderr)]
    interrupts = 0
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 2:
                    console.say("\nTerraform is stopping cleanly and will release the state lock; press Ctrl-C once "
                                "more to force it (that can leave the lock held).", err=True)
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
        for pump in pumps:
            pump.join(timeout=5.0)
    finally:
        if mode == "apply" or (mode in ("plan", "preview") and (interrupts or proc.returncode)):
            discard_plan(root)
    if interrupts:
        state = {"plan": "Nothing was applied." if code else "Nothing was applied: the plan had finished, but it is "
                                                             "not applied after an interrupt.",
                 "preview": "Nothing was applied, and no state lock was taken (a read-only plan)."}.get(mode) or (
            "The apply had finished before the interrupt took effect; the run stopped before its record." if code == 0
            else "The apply may be partial: Terraform saved the state of what it finished and released its state lock.")
        raise Interrupted(f"Interrupted during the {what}; Terraform was asked to stop and exited with code {code}. "
                          f"{state}", fix="run the same command again: it plans afresh from the saved state")
    if code != 0:
        raise failure(root, env, what=what, code=code, output="\n".join(p.text() for p in pumps),
                      ran=(started, time.time()), environment=environment)


# Terraform's colours pass; any other control byte of its output (which quotes outside text: a state lock's Who,
# an AWS error message) is shown as \xNN, so it cannot drive the terminal.
_CONTROL = re.compile(rb"\x1b\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f]")


def _shown(found: re.Match) -> bytes:
    return found.group() if len(found.group()) > 1 else b"\\x%02x" % found.group()[0]


class _Pump(threading.Thread):
    """Copy a child's pipe to *sink* as it comes, keep its tail, and never stop reading: a write to *sink* that
    fails (a closed pipe, a terminal that went away) stops the copying, not the reading."""

    def __init__(self, pipe, sink):
        super().__init__(daemon=True, name="deploy-app-output")
        self.pipe, self.sink, self.tail = pipe, getattr(sink, "buffer", None), bytearray()
        self.start()

    def run(self) -> None:
        while chunk := self._read():
            self.tail = (self.tail + chunk)[-256 * 1024:]
            try:
                if self.sink is not None:
                    self.sink.write(_CONTROL.sub(_shown, chunk))
                    self.sink.flush()
            except (OSError, ValueError):
                self.sink = None  # our own output is gone: keep draining the child's
        self.pipe.close()

    def _read(self) -> bytes:
        try:
            return os.read(self.pipe.fileno(), 65536)
        except OSError:
            return b""

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", self.tail.decode("utf-8", "replace"))


def discard_plan(root: Path) -> None:
    """Delete the saved plan and its JSON in *root*: they hold sensitive values in clear."""
    for name in (PLAN_FILE, PLAN_FILE + ".json", PLAN_FILE + ".json.tmp"):
        (root / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Failure:
    """One row of :data:`FAILURES`: Terraform's (or the script's) words, the error id, its text and its fix
    (``str.format`` templates over ``what``, ``step``, ``code``, ``said``: the first group of *pattern*, ``lock``:
    the ID of a lock Terraform could not release, and ``unlock``: the command that releases it)."""

    pattern: str
    id: str
    what: str
    fix: str
    mode: str | None = None  # the row holds only for this DEPLOY_MODE ("plan", "apply")


# Terraform's failures as data (as terragrunt keeps its retryable errors): the first row whose pattern is in the
# output names the failure. A held lock and the digest mismatch are told apart before (they need the lock info
# and the digest).
FAILURES = (
    Failure(r"Error releasing the state lock", "state-lock-failed",
            "The {what} failed and changed nothing, but Terraform could not release the state lock it had taken "
            "(lock {lock}): every later run is refused until it is released; Terraform's message above says why",
            "release it: {unlock}, then run the same command again", mode="plan"),
    Failure(r"Error releasing the state lock", "state-lock-failed",
            "The {what} ran (an apply may have changed IAM: Terraform's output above says what it applied), but "
            "Terraform could not release its state lock (lock {lock}) afterwards: the lock is still held, so every "
            "later run is refused until it is released; no record was written",
            "release it: {unlock}, then run the same command again (it plans against the state as it is now, applies "
            "what is missing and records)"),
    # A lock that could not be taken though nobody holds it, by the cause AWS gave in Terraform's message that
# follows (AccessDenied before a 5xx: a refusal is not cured by waiting).
    Failure(r"Error acquiring the state lock[\s\S]{0,3000}?(AccessDenied\w*)", "state-lock-failed",
            "The {what} could not take the Terraform state lock: this identity may not use the lock table or lock "
            "file ({said}); nothing was applied",
            "use an identity that may (dynamodb:GetItem, PutItem and DeleteItem on the lock table; s3:GetObject, "
            "PutObject and DeleteObject on the lock file), then run the same command again"),
    Failure(r"Error acquiring the state lock[\s\S]{0,3000}?(?:StatusCode|status code): (5\d\d)", "state-lock-failed",
            "The {what} could not take the Terraform state lock: AWS answered the lock request with a server error "
            "(HTTP {said}) even after the AWS SDK's retries; nothing was applied",
            "an AWS-side failure that passes by itself: run the same command again in a minute"),
    Failure(r"Error acquiring the state lock[\s\S]{0,3000}?(ResourceNotFoundException)", "state-lock-failed",
            "The {what} could not take the Terraform state lock: the lock table does not exist ({said}; deleted "
            "after this run checked it); nothing was applied",
            "run the same command again: it creates a missing lock table before the plan"),
    Failure(r"Error acquiring the state lock", "state-lock-failed",
            "The {what} could not take the Terraform state lock, and no other run holds it: Terraform could not use "
            "the lock table (or lock file); its own message above says why; nothing was applied",
            "fix what Terraform's message says, then run the same command again"),
    Failure(r"Saved plan is stale", "plan-stale",
            "The {what} was refused before it changed anything: the state changed after this plan was made (another "
            "run applied in between; Terraform: Saved plan is stale); nothing was applied",
            "run the same command again: it plans against the state as it is now"),
    Failure(r"Unsupported Terraform Core version", "terraform-version",
            "The {what} did not start: the root module's required_version does not admit this Terraform (its message "
            "is above); nothing was applied",
            "make terraform.required_version in the configuration agree with the root modules' required_version, and "
            "install a Terraform both admit"),
    Failure(r"Unreadable module directory|Module not installed|Failed to read module directory", "module-missing",
            "The {what} failed: a module the root module calls is not in the folders the apply may read (the root "
            "module, iam/terraform/bin and the shared modules folder of this commit); nothing was applied",
            "move the module into the shared modules folder (terraform.modules, default iam/terraform/modules), "
            "commit, and run the same command again"),
    Failure(r"^deploy-app\.sh: error: terraform (apply)[^\n]* failed \(exit (\d+)\)", "apply-failed",
            "The {what} failed: terraform apply exited {code} (the state may be partly updated, and the next run "
            "plans afresh from it); Terraform's own message is above",
            "fix what Terraform reports, then run the same command again"),
    Failure(r"^deploy-app\.sh: error: terraform (\w+)[^\n]* failed \(exit (\d+)\)", "plan-failed",
            "The {what} failed: terraform {step} exited {code} (nothing was applied); Terraform's own message is "
            "above", "fix what Terraform reports, then run the same command again"),
    Failure(r"^deploy-app\.sh: error: (.*)$", "deploy-script-failed",
            "The {what} did not run: deploy-app.sh stopped before Terraform: {said}. This is not a Terraform failure",
            "the runbook sets every variable deploy-app.sh needs from the configuration: if the script was changed, "
            "restore it (git checkout -- iam/terraform/bin/deploy-app.sh), commit, and run again"),
)


def failure(root: Path, env: dict[str, str], *, what: str, code: int, output: str,
            ran: tuple[float, float] | None = None, environment: str | None = None) -> RunbookError:
    """The error for a run of ``deploy-app.sh`` in *root* that exited *code* after printing *output*: a state lock
    held by another run is ``state-lock-held`` (exit 75) naming the release command, a lock this very run took
    (:func:`own_lock_age`; *ran*: start and end, seconds since the epoch) is named as such, the digest mismatch
    gets the exact ``put-item``, anything else is the first row of :data:`FAILURES` that matches, or bash dying
    without a message."""
    lock = LockInfo.parse(output) if "Error acquiring the state lock" in output else None
    if lock is not None:
        unlock = unlock_command(env, lock.id, environment)
        age = own_lock_age(lock, env, ran, root)
        if age is not None:
            return RunbookError(
                f"The {what} could not start: the Terraform state lock is held, by every sign by this very run: "
                f"{lock.describe()}, taken {age:.1f} s after this command started Terraform, by this machine's user, "
                "with this Terraform version and for this operation. Terraform's lock write succeeded but its answer "
                "was lost, the AWS SDK sent it again, and the second write found Terraform's own lock; nothing was "
                "applied", id="state-lock-held", code=EXIT_LOCKED, fix="check that no other Terraform runs for this "
                f"state (`pgrep -a terraform` here; ask your team), then release the lock: {unlock}")
        return RunbookError(
            f"The {what} could not start: the Terraform state is locked by another run, {lock.describe()}; nothing "
            "was applied", id="state-lock-held", code=EXIT_LOCKED,
            fix="if that run is still going, wait for it (add --lock-timeout-s 300 to the command to wait up to 5 "
                f"minutes); if it has died (its Terraform process is gone), release the lock after checking: {unlock}")
    if "does not have the expected content" in output:
        state = f"{env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}"
        digest = re.search(r"Digest\s+value\s+stored\s+in\s+the\s+DynamoDB\s+table\s+to\s+the\s+following\s+value:"
                           r"\s*([0-9a-f]{32})", output)
        return RunbookError(f"The {what} failed: the Terraform state in S3 does not match its digest in the lock "
                            "table (a run stopped between writing the state and its digest); nothing was applied",
                            id="state-digest-mismatch",
                            where=f"s3://{state}, DynamoDB table {env.get('TF_LOCK_TABLE')} item {state}-md5",
                            fix=digest_fix(root, env, digest.group(1) if digest else None))
    for row in FAILURES:
        found = list(re.finditer(row.pattern, output, re.M)) if row.mode in (None, env.get("DEPLOY_MODE")) else []
        if found:
            groups = found[-1].groups() + ("", "")
            lock_id = re.search(r"(?:force-unlock\s+|^\s*ID:\s+)([0-9A-Za-z-]+)",
                                output[output.rfind("Error releasing the state lock"):], re.M)
            lock = lock_id.group(1) if lock_id else "LOCK_ID"
            values = {"what": what, "step": groups[0], "code": groups[1] or code, "said": console.mask(groups[0]),
                      "lock": lock if lock_id else "its ID is in Terraform's message above",
                      "unlock": unlock_command(env, lock, environment)}
            return RunbookError(row.what.format(**values), id=row.id, where=str(root), fix=row.fix.format(**values))
    return RunbookError(
        f"The {what} did not finish: deploy-app.sh itself failed (exit {code}) without a message of its own, so bash "
        "stopped it; this is not a Terraform failure", id="deploy-script-failed", where=str(root),
        fix=f"run it by hand to see bash's message: cd {shlex.quote(str(root))} && DEPLOY_MODE="
            f"{shlex.quote(env.get('DEPLOY_MODE', 'plan'))} bash -x {shlex.quote(DEPLOY_SCRIPT)}")


def unlock_command(env: dict[str, str], lock_id: str, environment: str | None = None) -> str:
    """The ``inv iam.unlock`` line that releases *lock_id* for the scope *env* (from :func:`script_env`) is for. An
    account scope's line names *environment* (one in that account) too, so that it does not depend on the branch
    checked out where it is pasted."""
    name = env.get("TF_VAR_environment") or environment
    scope = "" if env.get("TF_VAR_environment") else " --account"
    return (f"inv iam.unlock{f' --env {shlex.quote(name)}' if name else ''}{scope} "
            f"--lock-id {shlex.quote(lock_id)}")


def own_lock_age(lock: LockInfo, env: dict[str, str], ran: tuple[float, float] | None, root: Path) -> float | None:
    """Seconds from the start of the Terraform command to *lock*'s creation when *lock* looks taken by that very
    command, else None.

    Terraform locks with a conditional write; when the write succeeds but its answer is lost, the AWS SDK sends it
    again, the condition fails on Terraform's own lock, and Terraform reports the lock as held. Such a lock was
    created while the command ran (*ran*: start and end, seconds since the epoch), by this machine's user
    (``user@host``, Terraform's Who: Go's user.Current), with the Terraform version and the operation in *env*,
    while no Terraform runs in *root* any more (Linux /proc). Sources:
    https://developer.hashicorp.com/terraform/language/backend/s3#state-locking and
    https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
    """
    import pwd
    import socket

    created = lock.created_at()
    operation = {"plan": "OperationTypePlan", "apply": "OperationTypeApply"}.get(env.get("DEPLOY_MODE", ""))
    if ran is None or created is None or lock.operation != operation or (
            env.get("TERRAFORM_VERSION") and lock.version != env["TERRAFORM_VERSION"]):
        return None
    try:
        users = {pwd.getpwuid(os.getuid()).pw_name}
    except KeyError:
        users = set()
    users |= {os.environ[name] for name in ("USER", "LOGNAME") if os.environ.get(name)}
    if lock.who not in {f"{user}@{socket.gethostname()}" for user in users}:
        return None
    if not ran[0] - 1.0 <= created <= ran[1] + 1.0:  # a second for clocks read in two processes
        return None
    if other_terraform_in(root):
        return None  # this command's Terraform has exited: a Terraform still running here is another run's
    return max(0.0, created - ran[0])


def other_terraform_in(root: Path) -> list[int]:
    """Process IDs of the Terraform processes whose working folder is *root* (Linux /proc; none elsewhere)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8")
            if comm.strip() == "terraform" and Path(os.readlink(f"/proc/{pid}/cwd")) == root.resolve():
                found.append(int(pid))
    return found


def digest_fix(root: Path, env: dict[str, str], digest: str | None) -> str:
    """The exact recovery for "state data in S3 does not have the expected content": Terraform's S3 backend keeps
    the state's MD5 in the lock table (item ``<bucket>/<key>-md5``, attribute ``Digest``); with no
    ``errored.tfstate`` left, the state in S3 is the newest, so the digest is set to the value Terraform computed."""
    item = {"LockID": {"S": f"{env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}-md5"},
            "Digest": {"S": digest or "DIGEST-FROM-TERRAFORMS-MESSAGE"}}
    command = shlex.join(["aws", "dynamodb", "put-item", "--region", env.get("AWS_REGION", ""), "--table-name",
                          env.get("TF_LOCK_TABLE", ""), "--item", json.dumps(item)]
                         + (["--endpoint-url", env["AWS_ENDPOINT_URL"]] if env.get("AWS_ENDPOINT_URL") else []))
    if (root / "errored.tfstate").exists():
        return (f"{root / 'errored.tfstate'} was left too: make the digest match the state in S3 first, then push that "
                f"file as TROUBLESHOOTING.md#errored-tfstate says: {command}")
    return f"the state in S3 is the newest (no errored.tfstate was left), so make the digest match it: {command}; " \
           "then run the same command again"
