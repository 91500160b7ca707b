"""The Terraform distribution: which binary, which version, and Terraform's rules for versions.

One small class, :class:`Terraform`, says what the runbook needs of a distribution: the binary's
name, how to ask its version, what to install, and from which version S3 lock files work. A
``tofu`` binary would be one more such class, with its own name and versions (OpenTofu is not
supported: none can be installed where this is tested). The version rules are Terraform's own
(https://developer.hashicorp.com/terraform/language/expressions/version-constraints, implemented
by https://github.com/hashicorp/go-version): ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` and ``~>``,
comma-separated; a pre-release such as ``1.10.0-alpha20240606`` satisfies only a constraint that
names a pre-release of the same version, never ``>= 1.10``.

This module imports nothing of the runbook but its errors: the configuration check uses it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from runbook.errors import RunbookError

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_PART = re.compile(r"^\s*(=|!=|>=|<=|>|<|~>)?\s*(\S+)\s*$")


@dataclass(frozen=True, order=True)
class Version:
    """A version as Terraform reads it: up to three numbers and an optional pre-release.

    ``segments`` counts how many numbers were written ("1.0" has 2), which ``~>`` needs.
    Ordering: numbers first, then a pre-release sorts before the release itself.
    """

    numbers: tuple[int, int, int]
    release: tuple[int, str]  # (1, "") for a release; (0, "alpha1") for a pre-release
    segments: int = 3

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse "1.11.4", "1.0", "v1.10.0-alpha2024". Raises ValueError when it is no version."""
        found = _VERSION.match(text.strip())
        if not found:
            raise ValueError(f"{text!r} is not a version")
        numbers = [int(n) for n in found.groups()[:3] if n is not None]
        pre = found.group(4) or ""
        return cls(tuple(numbers + [0] * (3 - len(numbers))), (0, pre) if pre else (1, ""), len(numbers))

    @property
    def prerelease(self) -> str:
        return self.release[1]

    def __str__(self) -> str:
        return ".".join(map(str, self.numbers)) + (f"-{self.prerelease}" if self.prerelease else "")


def _one(version: Version, op: str, want: Version) -> bool:
    if version.prerelease and (not want.prerelease or version.numbers != want.numbers):
        return False  # go-version: a pre-release matches only a constraint on a pre-release of the same version
    if op == "~>":
        if version < want or version.numbers[:want.segments - 1] != want.numbers[:want.segments - 1]:
            return False
        return True
    return {"=": version == want, "!=": version != want, ">": version > want, ">=": version >= want,
            "<": version < want, "<=": version <= want}[op]


def satisfies(version: str, constraints: str) -> bool:
    """Whether *version* ("1.11.4") meets Terraform-style *constraints* (">= 1.0.0, < 2.0.0", "~> 1.0").

    Raises ValueError when either cannot be read.
    """
    have = Version.parse(version)
    for part in constraints.split(","):
        found = _PART.match(part)
        if not found:
            raise ValueError(f"{constraints!r} is not a version constraint")
        if not _one(have, found.group(1) or "=", Version.parse(found.group(2))):
            return False
    return True


def constraint_problem(constraints: str) -> str | None:
    """Why *constraints* is not a Terraform version constraint, or None."""
    try:
        satisfies("1.0.0", constraints)
    except ValueError:
        return f'{constraints!r} is not a Terraform version constraint such as "~> 1.0" or ">= 1.0.0, < 2.0.0"'
    return None


@dataclass(frozen=True)
class Found:
    """A distribution's binary found on PATH: its absolute path and the version it reports."""

    path: str
    version: str


@dataclass
class Probe:
    """A version question under way (:meth:`Terraform.probe`); :meth:`found` waits for the answer (60 s at most)."""

    dist: Terraform
    binary: str | None
    proc: subprocess.Popen | None

    def found(self, required: str) -> Found:
        """The binary and its version, checked against *required*. Raises RunbookError (``terraform-missing``,
        ``terraform-version``) when it is absent, does not answer, or does not satisfy *required*."""
        dist = self.dist
        if self.binary is None:
            raise RunbookError(f"{dist.binary} is not on PATH; the IAM steps run {dist.name} through deploy-app.sh",
                               id="terraform-missing", fix=dist.install_hint)
        try:
            out, _ = self.proc.communicate(timeout=60) if self.proc else ("", None)
            version = json.loads(out)["terraform_version"]
            Version.parse(version)
        except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
            if self.proc:
                self.proc.kill()
            raise RunbookError(f"{self.binary} did not report its version (`{dist.binary} version -json`)",
                               id="terraform-version", fix=dist.install_hint) from exc
        dist.check(Found(self.binary, version), required, "config field terraform.required_version")
        return Found(self.binary, version)


class Terraform:
    """HashiCorp Terraform: the binary ``terraform``, its version from ``terraform version -json``
    (https://developer.hashicorp.com/terraform/cli/commands/version)."""

    name = "Terraform"
    binary = "terraform"
    install_hint = ("pip install -r requirements-dev.txt (brings Terraform 1.0.3), or install it from "
                    "https://developer.hashicorp.com/terraform/install")
    #: S3 lock files (the S3 backend's ``use_lockfile``) need this version or later
    #: (https://developer.hashicorp.com/terraform/language/backend/s3#state-locking).
    s3_lock_min = "1.10.0"

    def find(self, required: str, *, path: str | None = None) -> Found:
        """The binary on *path* (default ``$PATH``), checked against *required* (a constraint): ``probe().found``."""
        return self.probe(path=path).found(required)

    def probe(self, *, path: str | None = None) -> Probe:
        """Start ``terraform version -json`` of the binary on *path* (default ``$PATH``) and return at once: the
        version is asked while the run examines git (a binary of 90 MB takes 0.1 to 0.5 s to start). The shell's
        ``TF_CLI_ARGS*`` are left out (they would break ``-json``)."""
        binary = shutil.which(self.binary, path=path)
        if binary is None:
            return Probe(self, None, None)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CLI_ARGS")}
        try:
            proc = subprocess.Popen([binary, "version", "-json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, text=True, env={**env, "CHECKPOINT_DISABLE": "1"})
        except OSError:
            proc = None
        return Probe(self, binary, proc)

    def check(self, found: Found, required: str, where: str) -> None:
        """Raise RunbookError (``terraform-version``) unless *found* satisfies *required*, named at *where*."""
        if not satisfies(found.version, required):
            raise RunbookError(
                f"{self.name} {found.version} at {found.path} does not satisfy the required version {required!r}",
                id="terraform-version", where=where, fix=self.install_hint)
