"""The Terraform runner: finds Terraform, runs ``deploy-app.sh``, reads the plan.

Terraform itself only ever runs inside ``iam/terraform/bin/deploy-app.sh`` (the
same script an administrator can run by hand); this module prepares its
environment, streams its output live, forwards Ctrl-C to it exactly once, and
reads the plan summary from the JSON that the script's ``plan`` mode writes
beside the plan file (``terraform show -json``; format: Terraform docs, "JSON
Output Format", ``resource_changes[].change.actions``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.config import PROJECT_ROOT, Backend
from runbook.errors import Interrupted, RunbookError

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
            fix=INSTALL_HINT,
        )
    version = _version_of(binary)
    if not satisfies(version, required):
        raise RunbookError(
            f"Terraform {version} at {binary} does not satisfy the required version {required!r}",
            where="config field terraform.required_version",
            fix=INSTALL_HINT,
        )
    return binary, version


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
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        )
        version = json.loads(out.stdout)["terraform_version"]
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        raise RunbookError(
            f"{binary} did not report its version (`terraform version -json`)", fix=INSTALL_HINT
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
    "TF_WORKSPACE",
)
# ...and the sources shut rather than removed: the shared files and the instance metadata service.
CHILD_SHUT = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
              "AWS_EC2_METADATA_DISABLED": "true"}


def script_env(
    backend: Backend, *, mode: str, tf_vars: dict[str, str], terraform_bin: str | None = None,
    credentials: Any = None,
) -> dict[str, str]:
    """The environment variables that ``deploy-app.sh`` reads (its header documents them), and the
    credentials Terraform must use.

    *credentials* (``runbook.aws.Credentials``: the frozen keys that passed the caller identity
    check) become ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``;
    :func:`child_env` shuts every other credential source. So the identity Terraform uses is, key
    for key, the identity the runbook checked and records as ``applied_by``, whatever the user's
    shell exports (a configured ``profile:`` next to exported keys used to split the two). Without
    *credentials* (a dry run shows the command) the variables are left out.
    """
    env = {
        "DEPLOY_MODE": mode,
        "TF_STATE_BUCKET": backend.bucket,
        "TF_STATE_KEY": backend.key,
        "TF_LOCK_TABLE": backend.lock_table,
        "AWS_REGION": backend.region,
        "TF_PLAN_FILE": PLAN_FILE,
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
    }
    if backend.endpoint_url:
        env["AWS_ENDPOINT_URL"] = backend.endpoint_url
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
    (the shell's credential sources and ``TF_WORKSPACE``, so state goes to the configured key in
    the ``default`` workspace, never ``env:/<workspace>/...``), :data:`CHILD_SHUT` (no profile can
    be read, no instance role asked), then *env* from :func:`script_env`. Without credentials in
    *env* Terraform finds none and stops at ``init``: it never falls back to another identity."""
    return {**{k: v for k, v in os.environ.items() if k not in CHILD_REMOVED}, **CHILD_SHUT, **env}


def command(root: Path) -> list[str]:
    """The command line that runs the shared deploy script for one root module (cwd: *root*)."""
    inside = root.resolve().is_relative_to(PROJECT_ROOT)
    return ["bash", os.path.relpath(DEPLOY_SCRIPT, root.resolve()) if inside else str(DEPLOY_SCRIPT)]


def run_script(root: Path, env: dict[str, str], *, what: str) -> None:
    """Run ``deploy-app.sh`` in *root* with *env* on top of os.environ, streaming its output.

    The script runs in its own process group, so a Ctrl-C at the terminal
    reaches only this process, which forwards one SIGINT to Terraform:
    Terraform then stops cleanly and releases its state lock. A second Ctrl-C
    only prints a warning, because a second SIGINT makes Terraform exit at once
    and can leave the lock held; a third one is forwarded (the user insists).

    Args:
        root: the root module folder (the script's working directory).
        env: variables from :func:`script_env`.
        what: words for messages, e.g. "plan of environment stg".

    Raises RunbookError when the script exits non-zero, Interrupted on Ctrl-C.
    """
    if not root.is_dir():
        raise RunbookError(
            f"The root module folder {root} does not exist",
            where="config field terraform.roots",
            fix="point terraform.roots at the root modules, or restore the folder with `git checkout -- iam/`",
        )
    proc = subprocess.Popen(command(root), cwd=root, env=child_env(env), start_new_session=True)
    interrupts = 0
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 2:
                print("\nTerraform is stopping cleanly and will release the state lock; press Ctrl-C once more "
                      "to force it (that can leave the lock held).", file=sys.stderr, flush=True)
                continue
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    if interrupts:
        if env.get("DEPLOY_MODE") == "plan":
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
        raise RunbookError(
            f"The {what} failed (deploy-app.sh exited {code}); Terraform's own message is above",
            where=str(root),
            fix="fix what Terraform reports, then run the same command again",
        )


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
    """Planned output values from the plan JSON (``planned_values.outputs``), name -> value."""
    path = root / (PLAN_FILE + ".json")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    outputs = plan.get("planned_values", {}).get("outputs", {})
    return {name: o.get("value") for name, o in outputs.items() if not o.get("sensitive")}
