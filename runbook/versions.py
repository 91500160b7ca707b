"""The Terraform distribution: which binary, which version, and Terraform's rules for versions.

:class:`Terraform` says what the runbook needs of a distribution (binary, version query, install hint, the first
version with S3 lock files); :func:`satisfies` applies Terraform's version constraints.
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from runbook.errors import RunbookError

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_PART = re.compile(r"^\s*(=|!=|>=|<=|>|<|~>)?\s*(\S+)\s*$")
_COMPARE = {"=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt,
            "<=": operator.le, "~>": operator.ge}  # "~> 1.2.3" also keeps all but the last number: < 1.3


def parse(text: str) -> tuple[tuple[int, ...], tuple[int, str], int]:
    """("1.10.0-alpha1" ->) ((1, 10, 0), (0, "alpha1"), 3): the numbers, the release rank (a pre-release sorts
    before its release) and how many numbers were written (``~>`` needs it). Raises ValueError for no version."""
    found = _VERSION.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a version")
    numbers = [int(n) for n in found.groups()[:3] if n is not None]
    pre = found.group(4) or ""
    return tuple(numbers + [0] * (3 - len(numbers))), (0, pre) if pre else (1, ""), len(numbers)


def older(version: str, than: str) -> bool:
    """Whether *version* comes before *than* (False when either is no version)."""
    try:
        return parse(version)[:2] < parse(than)[:2]
    except ValueError:
        return False


def satisfies(version: str, constraints: str) -> bool:
    """Whether *version* ("1.11.4") meets Terraform-style *constraints* (">= 1.0.0, < 2.0.0", "~> 1.0").
    Raises ValueError when either cannot be read. The rules are Terraform's
    (https://developer.hashicorp.com/terraform/language/expressions/version-constraints, implemented by
    https://github.com/hashicorp/go-version): a pre-release such as ``1.10.0-alpha20240606`` satisfies only a
    constraint naming a pre-release of the same version, never ``>= 1.10``."""
    numbers, release, _ = parse(version)
    parts = [_PART.match(part) for part in constraints.split(",")]
    if not all(parts):
        raise ValueError(f"{constraints!r} is not a version constraint")
    for op, (w_numbers, w_release, segments) in [(p.group(1) or "=", parse(p.group(2))) for p in parts]:
        if release[1] and (not w_release[1] or numbers != w_numbers):
            return False  # go-version: a pre-release matches only a constraint on a pre-release of the same version
        if not _COMPARE[op]((numbers, release), (w_numbers, w_release)) \
                or op == "~>" and numbers[:segments - 1] != w_numbers[:segments - 1]:
            return False
    return True


def constraint_problem(constraints: str) -> str | None:
    """Why *constraints* cannot be a ``required_version``, or None: it is not a Terraform version constraint, or it
    names a pre-release, which Terraform refuses there ("Prerelease version constraints are not supported",
    Terraform 1.11; 1.0 fails such a constraint at ``init``)."""
    try:
        satisfies("1.0.0", constraints)
    except ValueError:
        return f'{constraints!r} is not a Terraform version constraint such as "~> 1.0" or ">= 1.0.0, < 2.0.0"'
    pre = [part.strip() for part in constraints.split(",") if parse(_PART.match(part).group(2))[1][1]]
    return (f"{constraints!r} names a pre-release ({pre[0]!r}), which Terraform refuses in required_version; name "
            'releases, such as "~> 1.0"') if pre else None


@dataclass(frozen=True)
class Found:
    """A distribution's binary found on PATH: its absolute path and the version it reports."""

    path: str
    version: str


class Terraform:
    """HashiCorp Terraform: the binary ``terraform``, its version from ``terraform version -json``
    (https://developer.hashicorp.com/terraform/cli/commands/version)."""

    name = "Terraform"
    binary = "terraform"
    install_hint = ("pip install -r requirements-dev.txt (brings Terraform 1.0.3), or install it from "
                    "https://developer.hashicorp.com/terraform/install")
    s3_lock_min = "1.10.0"
    """S3 lock files (``use_lockfile``) need this version or later
    (https://developer.hashicorp.com/terraform/language/backend/s3#state-locking)."""

    def probe(self, *, path: str | None = None):
        """Start ``terraform version -json`` of the binary on *path* (default ``$PATH``) and return at once a callable
        ``found(required) -> Found``: the version is asked while the run examines git (starting a binary of 90 MB
        takes 0.1 to 0.5 s). The shell's ``TF_CLI_ARGS*`` are left out (they would break ``-json``). The callable
        raises RunbookError (``terraform-missing``, ``terraform-version``) when the binary is absent, does not
        answer within 60 seconds, or does not satisfy *required*."""
        binary = shutil.which(self.binary, path=path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CLI_ARGS")}
        proc = subprocess.Popen([binary, "version", "-json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True,
                                env={**env, "CHECKPOINT_DISABLE": "1"}) if binary else None

        def found(required: str) -> Found:
            if proc is None:
                raise RunbookError(f"{self.binary} is not on PATH; the IAM steps run {self.name} through "
                                   "deploy-app.sh", id="terraform-missing", fix=self.install_hint)
            try:
                version = json.loads(proc.communicate(timeout=60)[0])["terraform_version"]
                parse(version)
            except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
                proc.kill()
                raise RunbookError(f"{binary} did not report its version (`{self.binary} version -json`)",
                                   id="terraform-version", fix=self.install_hint) from exc
            self.check(Found(binary, version), required, "config field terraform.required_version")
            return Found(binary, version)

        return found

    def check(self, found: Found, required: str, where: str) -> None:
        """Raise RunbookError (``terraform-version``) unless *found* satisfies *required*, named at *where*."""
        if not satisfies(found.version, required):
            raise RunbookError(
                f"{self.name} {found.version} at {found.path} does not satisfy the required version {required!r}",
                id="terraform-version", where=where, fix=self.install_hint)
