"""The Terraform runner: finds Terraform, runs ``deploy-app.sh``, reads the plan.

Terraform itself only ever runs inside ``iam/terraform/bin/deploy-app.sh`` (the
same script an administrator can run by hand); this module prepares its
environment, streams its output live (reading it to the end even when our own
output has gone), forwards Ctrl-C to it exactly once, tells Terraform's failures
from the script's own (a state lock held elsewhere, a state digest mismatch,
CRLF line endings), finds what a failed run left (errored.tfstate, crash.log),
and reads the plan summary from the JSON that the script's ``plan`` mode writes
beside the plan file (``terraform show -json``; format: Terraform docs, "JSON
Output Format", ``resource_changes[].change.actions``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook import console
from runbook.config import PROJECT_ROOT, Backend
from runbook.errors import Interrupted, RunbookError
from runbook.statelock import LockInfo, parse_lock_error

DEPLOY_SCRIPT = PROJECT_ROOT / "iam" / "terraform" / "bin" / "deploy-app.sh"
PLAN_FILE = ".terraform/runbook.tfplan"
INSTALL_HINT = "pip install -r requirements-dev.txt (brings Terraform 1.0.3), or install it from hashicorp.com"


@dataclass(frozen=True)
class PlanSummary:
    """Counts from a saved plan: resources to add, change, destroy; outputs that change."""

    add: int
    change: int
    destroy: int
    outputs_changed: int = 0

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.destroy or self.outputs_changed)

    def __str__(self) -> str:
        text = f"{self.add} to add, {self.change} to change, {self.destroy} to destroy"
        return text + (f"; {self.outputs_changed} output(s) change" if self.outputs_changed else "")


def find(required: str, *, path: str | None = None) -> tuple[str, str]:
    """Find ``terraform`` on PATH and check it against *required*.

    Args:
        required: a Terraform version constraint such as ">= 1.0.0" or "~> 1.0, < 2.0".
        path: search path (default: $PATH).

    Returns (absolute path, version such as "1.0.3").
    Raises RunbookError when it is missing, does not run, or is too old or too new.
    """
    binary = shutil.which("terraform", path=path)
    if binary is None:
        raise RunbookError(
            "terraform is not on PATH; the IAM steps run Terraform through deploy-app.sh",
            id="terraform-missing",
            fix=INSTALL_HINT,
        )
    version = _version_of(binary)
    if not satisfies(version, required):
        raise RunbookError(
            f"Terraform {version} at {binary} does not satisfy the required version {required!r}",
            id="terraform-version",
            where="config field terraform.required_version",
            fix=INSTALL_HINT,
        )
    return binary, version


def check_lock_mode(version: str, backend: Backend, *, binary: str = "terraform") -> None:
    """Refuse a Terraform that cannot lock *backend*'s state the configured way.

    ``lock: s3`` (S3 lock files, the backend's ``use_lockfile``) needs Terraform 1.10 or later
    (https://developer.hashicorp.com/terraform/language/backend/s3#state-locking); an older one would
    ignore it or fail at ``init``. Raises RunbookError naming the version needed.
    """
    from runbook.config import S3_LOCK_MIN_VERSION

    if not backend.uses_lockfile or satisfies(version, f">= {S3_LOCK_MIN_VERSION}"):
        return
    raise RunbookError(
        f"Terraform {version} at {binary} cannot lock the state with an S3 lock file: terraform.backend.lock is "
        f"{backend.lock} "
        f"(use_lockfile), which needs Terraform {S3_LOCK_MIN_VERSION} or later; nothing was changed",
        id="terraform-version",
        where="config field terraform.backend.lock",
        fix=f"install Terraform {S3_LOCK_MIN_VERSION} or later (https://developer.hashicorp.com/terraform/install) "
        "and put it first on PATH; or set terraform.backend.lock: dynamodb",
    )


def check_state_version(version: str, state_version: str | None, *, where: str, binary: str = "terraform",
                        planned: bool = False) -> None:
    """Refuse a Terraform older than the one that last wrote the state at *where* (``s3://bucket/key``).

    *state_version* is the state's ``terraform_version`` (None or "" when unknown or no state). A
    Terraform older than that would fail halfway through, or write the state back in an older form
    (https://developer.hashicorp.com/terraform/language/v1-compatibility-promises). Raises RunbookError
    naming both versions and the one to install; *planned*: a plan already ran (the message says so).
    """
    if not state_version or not re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?", state_version):
        return
    if _parse(version) >= _parse(state_version):
        return
    raise RunbookError(
        f"The state {where} was last written by Terraform {state_version}, but this run would use Terraform "
        f"{version} ({binary}), which is older; "
        + ("nothing was applied (the plan above started before this look-up answered)" if planned
           else "nothing was planned or applied"),
        id="terraform-version",
        where="config field terraform.required_version",
        fix=f"install Terraform {state_version} or later (https://developer.hashicorp.com/terraform/install) and "
        f'put it first on PATH; pin it for the team: terraform.required_version ">= {state_version}"',
    )


def _version_of(binary: str) -> str:
    """``terraform version -json`` of *binary*, cached by the binary's real path, size and mtime.

    Starting Terraform only to ask its version costs 0.2-0.5 s on every run; a
    replaced binary has another size or mtime, so the cache cannot go stale
    (see :mod:`runbook.cache`).
    """
    from runbook import cache

    real = os.path.realpath(binary)
    try:
        stat = os.stat(real)
        key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        key = None
    known = cache.get("terraform-version", key) if key else None
    if isinstance(known, str):
        return known
    try:
        out = subprocess.run(
            [binary, "version", "-json"], capture_output=True, text=True, timeout=60,
            env=child_env({"CHECKPOINT_DISABLE": "1"}),  # the shell's TF_CLI_ARGS would break -json too
        )
        version = json.loads(out.stdout)["terraform_version"]
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        raise RunbookError(
            f"{binary} did not report its version (`terraform version -json`)", id="terraform-version", fix=INSTALL_HINT
        ) from None
    if key:
        cache.put("terraform-version", key, version)
    return version


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0])[:3])


def satisfies(version: str, constraints: str) -> bool:
    """Whether *version* meets Terraform-style *constraints* (=, !=, >, >=, <, <=, ~>; comma-separated).

    Source: Terraform docs, "Version Constraints". Raises RunbookError for a constraint it cannot read.
    """
    have = _parse(version)
    have = have + (0,) * (3 - len(have))
    for part in constraints.split(","):
        match = re.fullmatch(r"\s*(=|!=|>=|<=|>|<|~>)?\s*v?(\d+(?:\.\d+){0,2})\s*", part)
        if not match:
            raise RunbookError(
                f"Cannot read the Terraform version constraint {constraints!r}",
                id="terraform-version",
                where="config field terraform.required_version",
                fix='write it as Terraform does, e.g. ">= 1.0.0" or "~> 1.0"',
            )
        op, raw = match.group(1) or "=", match.group(2)
        want = _parse(raw)
        padded = want + (0,) * (3 - len(want))
        if op == "~>":
            upper = list(want[:-1]) if len(want) > 1 else [want[0]]
            upper[-1] += 1
            ok = have >= padded and have[: len(upper)] < tuple(upper)
        else:
            ok = {
                "=": have == padded,
                "!=": have != padded,
                ">": have > padded,
                ">=": have >= padded,
                "<": have < padded,
                "<=": have <= padded,
            }[op]
        if not ok:
            return False
    return True


# Every variable through which the AWS SDK in Terraform (its S3 backend and the AWS provider) could
# pick credentials other than the ones handed over, or Terraform a workspace other than "default".
# Sources: AWS SDKs and Tools Reference Guide, "Environment variables"
# (https://docs.aws.amazon.com/sdkref/latest/guide/settings-reference.html#EVarSettings); Terraform
# docs, "TF_WORKSPACE" (https://developer.hashicorp.com/terraform/cli/config/environment-variables).
CHILD_REMOVED = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "TF_WORKSPACE", "TF_DATA_DIR",
    # endpoints of the older SDK variables: the backend and provider go where the configuration says
    "AWS_S3_ENDPOINT", "AWS_DYNAMODB_ENDPOINT", "AWS_STS_ENDPOINT", "AWS_IAM_ENDPOINT",
)
# Whole families the shell must not hand to Terraform: extra command-line arguments
# (TF_CLI_ARGS, TF_CLI_ARGS_plan: -var, -target, -destroy, -lock=false, -backend-config=role_arn=...),
# input variables (TF_VAR_*: the runbook sets its own from the configuration) and endpoints
# (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>: deploy-app.sh sets AWS_ENDPOINT_URL from
# endpoint_url when an account has one). Terraform docs, "Environment Variables":
# https://developer.hashicorp.com/terraform/cli/config/environment-variables
CHILD_REMOVED_PREFIXES = ("TF_CLI_ARGS", "TF_VAR_", "AWS_ENDPOINT_URL")
# ...and the sources shut rather than removed: the shared files and the instance metadata service.
CHILD_SHUT = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
              "AWS_EC2_METADATA_DISABLED": "true"}


def script_env(
    backend: Backend, *, mode: str, tf_vars: dict[str, str], terraform_bin: str | None = None,
    credentials: Any = None, terraform_version: str | None = None,
) -> dict[str, str]:
    """The environment variables that ``deploy-app.sh`` reads (its header documents them), and the
    credentials Terraform must use.

    *credentials* (``runbook.aws.Credentials``: the frozen keys that passed the caller identity
    check) become ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``;
    :func:`child_env` shuts every other credential source. So the identity Terraform uses is, key
    for key, the identity the runbook checked and records as ``applied_by``, whatever the user's
    shell exports (a configured ``profile:`` next to exported keys used to split the two). Without
    *credentials* (a dry run shows the command) the variables are left out.

    The lock: ``TF_LOCK_MODE`` (``backend.lock``) and, in "dynamodb" mode only, ``TF_LOCK_TABLE``.
    *terraform_version* (from :func:`find`, e.g. "1.11.4") becomes ``TERRAFORM_VERSION``, from which the
    script chooses the backend arguments of that version (without it the script asks Terraform itself).
    """
    env = {
        "DEPLOY_MODE": mode,
        "TF_STATE_BUCKET": backend.bucket,
        "TF_STATE_KEY": backend.key,
        "TF_LOCK_MODE": backend.lock,
        "AWS_REGION": backend.region,
        "TF_PLAN_FILE": PLAN_FILE,
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
    }
    if backend.uses_table:
        env["TF_LOCK_TABLE"] = backend.lock_table
    if backend.endpoint_url:
        env["AWS_ENDPOINT_URL"] = backend.endpoint_url
    if terraform_version:
        env["TERRAFORM_VERSION"] = terraform_version
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        env["TF_CLI_ARGS"] = "-no-color"
    if terraform_bin:
        env["TERRAFORM_BIN"] = terraform_bin
    if credentials is not None:
        env.update(credentials.env())
    env.update({f"TF_VAR_{k}": v for k, v in tf_vars.items()})
    return env


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The whole environment of ``deploy-app.sh``: ``os.environ`` without :data:`CHILD_REMOVED`
    and :data:`CHILD_REMOVED_PREFIXES` (the shell's credential sources, endpoints, extra Terraform
    arguments and input variables, ``TF_WORKSPACE`` and ``TF_DATA_DIR``, so state goes to the
    configured key in the ``default`` workspace, never ``env:/<workspace>/...``, with exactly the
    configuration's inputs), :data:`CHILD_SHUT` (no profile can
    be read, no instance role asked), then *env* from :func:`script_env`. Without credentials in
    *env* Terraform finds none and stops at ``init``: it never falls back to another identity."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in CHILD_REMOVED and not k.startswith(CHILD_REMOVED_PREFIXES)}
    return {**inherited, **CHILD_SHUT, **env}


def command(root: Path) -> list[str]:
    """The command line that runs the shared deploy script for one root module (cwd: *root*)."""
    inside = root.resolve().is_relative_to(PROJECT_ROOT)
    return ["bash", os.path.relpath(DEPLOY_SCRIPT, root.resolve()) if inside else str(DEPLOY_SCRIPT)]


def run_script(root: Path, env: dict[str, str], *, what: str) -> None:
    """Run ``deploy-app.sh`` in *root* with *env* on top of os.environ, streaming its output.

    The script runs in its own session (process group), so a Ctrl-C at the
    terminal reaches only this process, which forwards one SIGINT to Terraform:
    Terraform then stops cleanly and releases its state lock. A second Ctrl-C
    only prints a warning, because a second SIGINT makes Terraform exit at once
    and can leave the lock held; a third one is forwarded (the user insists).
    The task layer turns SIGTERM and SIGHUP into the same KeyboardInterrupt.

    The script's output comes through pipes that this process reads to the end
    and copies to its own stdout and stderr. When those are gone (``inv ... |
    tee run.log`` and the Ctrl-C killed ``tee``), the copy is dropped but the
    reading goes on: Terraform is never killed by its output going away
    (a Go program writing to a closed pipe dies of SIGPIPE, lock held).

    In apply mode the plan's outputs are read before the apply (for the record,
    :func:`read_outputs`), and the saved plan and its JSON, which hold
    sensitive values in clear, are deleted once the script has ended.

    Args:
        root: the root module folder (the script's working directory).
        env: variables from :func:`script_env`.
        what: words for messages, e.g. "plan of environment stg".

    Raises Interrupted on Ctrl-C (or SIGTERM/SIGHUP), StateLocked (exit code
    75) when another run holds the state lock, and RunbookError when the script
    exits non-zero, saying whether Terraform or the script itself failed.
    """
    if not root.is_dir():
        raise RunbookError(
            f"The root module folder {root} does not exist",
            id="root-module-missing",
            where="config field terraform.roots",
            fix="point terraform.roots at the root modules, or restore the folder with `git checkout -- iam/`",
        )
    mode = env.get("DEPLOY_MODE")
    if mode == "apply":
        _planned_outputs[root.resolve()] = _outputs_in_plan(root)
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    started = time.time()
    proc = subprocess.Popen(command(root), cwd=root, env=child_env(env), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for pump in pumps:
            pump.join(timeout=5.0)
    finally:
        if mode == "apply":
            discard_plan(root)
    output = pumps[0].text() + "\n" + pumps[1].text()
    if interrupts:
        if mode == "plan":
            discard_plan(root)
            state = ("Nothing was applied" + ("." if code else ": the plan had finished, but it is not applied "
                                                              "after an interrupt."))
        elif code == 0:
            state = "The apply had finished before the interrupt took effect; the run stopped before its record."
        else:
            state = ("The apply may be partial: Terraform saved the state of what it finished and released its "
                     "state lock.")
        raise Interrupted(
            f"Interrupted during the {what}; Terraform was asked to stop and exited with code {code}. {state}",
            fix="run the same command again: it plans afresh from the saved state",
        )
    if code != 0:
        if mode == "plan":
            discard_plan(root)
        raise failure(root, env, what=what, code=code, output=output, ran=(started, time.time()))


class _Pump(threading.Thread):
    """Copy a child's pipe to *sink* as it comes, keep its tail, and never stop reading.

    A write to *sink* that fails (a closed pipe, a terminal that went away) stops the copying,
    not the reading: the child's writes always succeed.
    """

    TAIL_BYTES = 256 * 1024

    def __init__(self, pipe, sink):
        super().__init__(daemon=True, name="deploy-app-output")
        self.pipe, self.sink = pipe, sink
        self.tail = bytearray()
        self.start()

    def run(self) -> None:
        target = getattr(self.sink, "buffer", None)
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.TAIL_BYTES)]
            if self.sink is None:
                continue
            try:
                if target is not None:
                    target.write(chunk)
                    target.flush()
                else:
                    self.sink.write(chunk.decode("utf-8", "replace"))
                    self.sink.flush()
            except (OSError, ValueError):
                self.sink = None  # our own output is gone: keep draining the child's
        self.pipe.close()

    def text(self) -> str:
        return _ANSI.sub("", self.tail.decode("utf-8", "replace"))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _flush(stream) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


# deploy-app.sh's exit status when another run holds the state lock (see its header); inv exits with it too.
LOCKED_EXIT = 75
_TF_FAILED = re.compile(r"^deploy-app\.sh: error: terraform (\w+)[^\n]* failed \(exit (\d+)\)", re.M)
_SCRIPT_ERROR = re.compile(r"^deploy-app\.sh: error: (.*)$", re.M)
# Terraform 1.0 and 1.11 wrap this sentence at different words: any run of whitespace between them.
_DIGEST = re.compile(r"Digest\s+value\s+stored\s+in\s+the\s+DynamoDB\s+table\s+to\s+the\s+following\s+value:"
                     r"\s*([0-9a-f]{32})")


class StateLocked(RunbookError):
    """Another run holds the state lock; nothing was applied. Exit code 75 (``LOCKED_EXIT``)."""

    default_id = "state-lock-held"

    def __init__(self, what: str, *, lock: LockInfo, fix: str):
        super().__init__(what, fix=fix, code=LOCKED_EXIT)
        self.lock = lock


def own_lock_age(lock: LockInfo, env: dict[str, str], ran: tuple[float, float] | None,
                 root: Path | None = None) -> float | None:
    """Seconds from the start of the Terraform command to *lock*'s creation when *lock* looks taken by that
    very command, else None.

    Terraform locks with a conditional write (DynamoDB PutItem, or S3 PutObject If-None-Match). When
    the write succeeds but its answer is lost (a connection reset), the AWS SDK sends it again, the
    condition fails on Terraform's own lock, and Terraform reports the lock as held by another run.
    Such a lock was created while the command ran (*ran*: its start and end, seconds since the epoch),
    by this machine's user (``user@host``, as Terraform writes Who), with the Terraform version in
    *env* (``TERRAFORM_VERSION``) and for the operation the script ran (``DEPLOY_MODE``: plan or apply),
    while no Terraform runs in the root module folder *root* any more (:func:`other_terraform_in`).
    Another run could match all of that only by starting the same operation, as the same user on a
    machine of the same name (or from another folder of this one), within those seconds: so the
    runbook says what it found and leaves the release to the administrator. Sources: the Terraform S3 backend's locking,
    https://developer.hashicorp.com/terraform/language/backend/s3#state-locking; the AWS SDKs' retry
    behavior, https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
    """
    import pwd
    import socket

    created = lock.created_at()
    operation = {"plan": "OperationTypePlan", "apply": "OperationTypeApply"}.get(env.get("DEPLOY_MODE", ""))
    if ran is None or created is None or operation is None or lock.operation != operation:
        return None
    if env.get("TERRAFORM_VERSION") and lock.version != env["TERRAFORM_VERSION"]:
        return None
    # Terraform's Who is Go's user.Current(): the password entry of this uid, else $USER.
    try:
        users = {pwd.getpwuid(os.getuid()).pw_name}
    except KeyError:
        users = set()
    users |= {os.environ[name] for name in ("USER", "LOGNAME") if os.environ.get(name)}
    if lock.who not in {f"{user}@{socket.gethostname()}" for user in users}:
        return None
    started, ended = ran
    if not started - 1.0 <= created <= ended + 1.0:  # a second for clocks read in two processes
        return None
    if root is not None and other_terraform_in(root):
        return None  # this command's Terraform has exited: a Terraform still running here is another run's
    return max(0.0, created - started)


def other_terraform_in(root: Path) -> list[int]:
    """Process IDs of the Terraform processes that run in the root module folder *root*.

    Reads Linux's /proc (each process's name and working directory; another user's working directory
    cannot be read, so for anyone but root these are this user's processes). Elsewhere, or when /proc
    cannot be read, it finds none and the message's ``pgrep -a terraform`` advice stays the check.
    """
    found = []
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return found
    target = root.resolve()
    for pid in entries:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                if comm.read().strip() != "terraform":
                    continue
            if Path(os.readlink(f"/proc/{pid}/cwd")) == target:
                found.append(int(pid))
        except OSError:
            continue
    return found


def unlock_command(env: dict[str, str], lock_id: str) -> str:
    """The ``inv iam.unlock`` line that releases *lock_id* for the scope *env* (from :func:`script_env`) is for."""
    name = env.get("TF_VAR_environment")
    scope = f"--env {shlex.quote(name)}" if name else "--account"
    return f"inv iam.unlock {scope} --lock-id {shlex.quote(lock_id or 'ID')}"


def failure(root: Path, env: dict[str, str], *, what: str, code: int, output: str,
            ran: tuple[float, float] | None = None) -> RunbookError:
    """The error for a run of ``deploy-app.sh`` that exited *code* (non-zero) after printing *output*.

    Tells Terraform's failures (the script's ``error: terraform CMD failed (exit N)`` line) from the
    script's own (its other ``error:`` lines: usage, missing variables, no Terraform) and from bash
    itself dying (no ``error:`` line at all, e.g. on CR line endings); recognises the state lock held by
    another run, the lock this very run's Terraform took (see :func:`own_lock_age`; *ran* is when the
    script started and ended, seconds since the epoch), and the state digest mismatch that follows a
    state write cut short.
    """
    lock = parse_lock_error(output)
    if lock is None and (code == LOCKED_EXIT or "Error acquiring the state lock" in output):
        return RunbookError(
            f"The {what} could not take the Terraform state lock, and no other run holds it: Terraform could not "
            "use the lock table (or lock file) at all; its own message above says why (AccessDenied, a missing "
            "table); nothing was applied",
            id="state-lock-failed",
            where=f"DynamoDB table {env.get('TF_LOCK_TABLE')}, s3://{env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}",
            fix="use an identity that may read and write the lock table (dynamodb:GetItem, PutItem, DeleteItem), "
            "or restore the table",
        )
    age = own_lock_age(lock, env, ran, root) if lock is not None else None
    if lock is not None and age is not None:
        return StateLocked(
            f"The {what} could not start: the Terraform state lock is held, by every sign by this very run: "
            f"{lock.describe()}, taken {age:.1f} s after this command started Terraform, by this machine's user, "
            "with this Terraform version and for this operation. Terraform's lock write succeeded but its answer "
            "was lost, the AWS SDK sent it again, and the second write found Terraform's own lock; nothing was "
            "applied",
            lock=lock,
            fix="check that no other Terraform runs for this state (`pgrep -a terraform` here; ask your team), "
            f"then release the lock: {unlock_command(env, lock.id)}",
        )
    if lock is not None:
        return StateLocked(
            f"The {what} could not start: the Terraform state is locked by another run, {lock.describe()}; "
            "nothing was applied",
            lock=lock,
            fix="if that run is still going, wait for it (add --lock-timeout-s 300 to the command to wait up to "
            "5 minutes); if it has died (its Terraform process is gone), release the lock after checking: "
            f"{unlock_command(env, lock.id)}",
        )
    digest = _DIGEST.search(output)
    if "does not have the expected content" in output:
        return RunbookError(
            f"The {what} failed: the Terraform state in S3 does not match its digest in the lock table "
            "(a run stopped between writing the state and its digest); nothing was applied",
            id="state-digest-mismatch",
            where=f"s3://{env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}, DynamoDB table "
            f"{env.get('TF_LOCK_TABLE')} item {env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}-md5",
            fix=digest_fix(root, env, digest.group(1) if digest else None),
        )
    failed = _TF_FAILED.findall(output)
    if failed:
        step, tf_code = failed[-1]
        partial = ("the state may be partly updated, and the next run plans afresh from it" if step == "apply"
                   else "nothing was applied")
        return RunbookError(
            f"The {what} failed: terraform {step} exited {tf_code} ({partial}); Terraform's own message is above",
            id="apply-failed" if step == "apply" else "plan-failed",
            where=str(root),
            fix="fix what Terraform reports, then run the same command again",
        )
    own = _SCRIPT_ERROR.findall(output)
    if own:
        hint = {127: INSTALL_HINT}.get(code, "the runbook sets every variable deploy-app.sh needs from the "
                                             "configuration: if the script was changed, restore it with "
                                             "`git checkout -- iam/terraform/bin/deploy-app.sh`")
        return RunbookError(
            f"The {what} did not run: deploy-app.sh stopped before Terraform (exit {code}): "
            f"{console.mask(own[-1])}. This is not a Terraform failure",
            id="deploy-script-failed",
            where=str(DEPLOY_SCRIPT),
            fix=hint,
        )
    scripts = [p for p in _script_files() if b"\r" in _read_bytes(p)]
    if scripts:
        shown = ", ".join(os.path.relpath(p, PROJECT_ROOT) for p in scripts)
        names = " ".join(shlex.quote(os.path.relpath(p, PROJECT_ROOT)) for p in scripts)
        return RunbookError(
            f"The {what} did not run: bash stopped deploy-app.sh (exit {code}) because {shown} has Windows (CRLF) "
            "line endings. This is not a Terraform failure",
            id="crlf-line-endings",
            where=shown,
            fix="check the scripts out again with LF endings (git stores them with LF): git config core.autocrlf "
            f"input && rm -f {names} && git checkout -- {names}",
        )
    return RunbookError(
        f"The {what} did not finish: deploy-app.sh itself failed (exit {code}) without a message of its own, "
        "so bash stopped it; this is not a Terraform failure",
        id="deploy-script-failed",
        where=str(DEPLOY_SCRIPT),
        fix=f"run it by hand to see bash's message: cd {shlex.quote(str(root))} && DEPLOY_MODE="
        f"{shlex.quote(env.get('DEPLOY_MODE', 'plan'))} bash -x {shlex.quote(command(root)[1])}; restore the "
        "script with `git checkout -- iam/terraform/bin/deploy-app.sh` if it was changed",
    )


def digest_fix(root: Path, env: dict[str, str], digest: str | None) -> str:
    """The exact recovery for "state data in S3 does not have the expected content".

    Terraform's S3 backend keeps the MD5 of the state object in the lock table (item
    ``<bucket>/<key>-md5``, attribute ``Digest``) and refuses a state that does not match it. When
    no ``errored.tfstate`` was left, the state in S3 is the newest one, so the digest is set to what
    Terraform computed from it (the value in its message).
    """
    item = {"LockID": {"S": f"{env.get('TF_STATE_BUCKET')}/{env.get('TF_STATE_KEY')}-md5"},
            "Digest": {"S": digest or "DIGEST-FROM-TERRAFORMS-MESSAGE"}}
    aws = (f"aws dynamodb put-item --region {shlex.quote(env.get('AWS_REGION', ''))} --table-name "
           f"{shlex.quote(env.get('TF_LOCK_TABLE', ''))} --item {shlex.quote(json.dumps(item))}")
    if env.get("AWS_ENDPOINT_URL"):
        aws += f" --endpoint-url {shlex.quote(env['AWS_ENDPOINT_URL'])}"
    if env.get("AWS_PROFILE"):
        aws += f" --profile {shlex.quote(env['AWS_PROFILE'])}"
    if (root / "errored.tfstate").exists():
        return (f"{root / 'errored.tfstate'} was left too: make the digest match the state in S3 first, then push "
                f"that file as TROUBLESHOOTING.md#errored-tfstate says: {aws}")
    return (f"the state in S3 is the newest (no errored.tfstate was left), so make the digest match it: {aws}; "
            "then run the same command again")


def _script_files() -> list[Path]:
    base = DEPLOY_SCRIPT.parent.parent
    return [DEPLOY_SCRIPT, *sorted(base.glob("*/bin/deploy-app.sh"))]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def discard_plan(root: Path) -> None:
    """Delete the saved plan and its JSON in *root*: they hold sensitive values in clear."""
    for name in (PLAN_FILE, PLAN_FILE + ".json", PLAN_FILE + ".json.tmp"):
        try:
            (root / name).unlink()
        except FileNotFoundError:
            pass


def leftovers(root: Path, *, command: str, profile: str | None = None) -> RunbookError | None:
    """What a failed Terraform run left in *root* that must be dealt with before the next run, or None.

    ``errored.tfstate``: Terraform applied but could not write the state to the backend; that file is
    the only copy of the new state (https://developer.hashicorp.com/terraform/cli/commands/state/push).
    ``crash.log``: Terraform crashed (Terraform 1.0 writes it in the working directory); the state may
    be partial and its lock still held. *command* is the runbook command to run afterwards; *profile*
    the account's AWS profile, for the commands Terraform runs by hand.
    """
    where = os.path.relpath(root, Path.cwd()) if root.resolve().is_relative_to(Path.cwd().resolve()) else str(root)
    aws_profile = f"AWS_PROFILE={shlex.quote(profile)} " if profile else ""
    if (root / "errored.tfstate").exists():
        return RunbookError(
            f"{where}/errored.tfstate is there: an earlier apply changed resources but could not save the "
            "state to S3, and this file is the only copy of the new state. Do not delete or stash it: push it "
            "to the backend, then run again (if the push says the state is locked, `inv iam.unlock` releases "
            "the lock of the run that died)",
            id="errored-tfstate",
            where=str(root / "errored.tfstate"),
            fix=f"cd {shlex.quote(where)} && {aws_profile}terraform state push errored.tfstate && "
            f"rm errored.tfstate && cd - && {command}",
        )
    if (root / "crash.log").exists():
        return RunbookError(
            f"{where}/crash.log is there: Terraform crashed during an earlier run, which may have left the "
            "state partly updated and its lock held",
            id="terraform-crashed",
            where=str(root / "crash.log"),
            fix=f"read it (and report a Terraform panic upstream), then move it out of the root module and run "
            "again (it plans afresh from the saved state; a lock left held is reported with its unlock command): "
            f"mv {shlex.quote(where + '/crash.log')} \"$HOME/terraform-crash-$(date +%s).log\" && {command}",
        )
    return None


def read_plan(root: Path) -> PlanSummary:
    """Summarise the plan JSON written by the script's ``plan`` mode.

    Raises RunbookError when the file is missing or unreadable.
    """
    path = root / (PLAN_FILE + ".json")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunbookError(
            f"The plan summary {path} is missing or unreadable",
            id="plan-failed",
            fix="run the plan again (the same command); deploy-app.sh writes it in plan mode",
        ) from None
    add = change = destroy = 0
    for rc in plan.get("resource_changes", []):
        actions = rc.get("change", {}).get("actions", [])
        add += "create" in actions
        destroy += "delete" in actions
        change += actions == ["update"]
    outputs = sum(1 for oc in plan.get("output_changes", {}).values() if oc.get("actions") != ["no-op"])
    return PlanSummary(add=add, change=change, destroy=destroy, outputs_changed=outputs)


def read_outputs(root: Path) -> dict:
    """Planned output values (``planned_values.outputs`` of the plan JSON), name -> value; sensitive ones left out.

    After an apply by :func:`run_script` the plan JSON is gone: the values it read just before the
    apply are returned (once).
    """
    known = _planned_outputs.pop(root.resolve(), None)
    return known if known is not None else _outputs_in_plan(root)


_planned_outputs: dict[Path, dict] = {}


def _outputs_in_plan(root: Path) -> dict:
    path = root / (PLAN_FILE + ".json")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    outputs = plan.get("planned_values", {}).get("outputs", {})
    return {name: o.get("value") for name, o in outputs.items() if not o.get("sensitive")}
