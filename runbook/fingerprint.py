"""Fingerprint of what an IAM apply puts into an account: files, shared script, inputs.

The fingerprint is a SHA-256 over three kinds of part, each framed so that no
byte can move from one part to another without changing the hash:

- every file of the Terraform root module, by its path relative to the root
  (POSIX separators, Unicode NFC) and its content;
- each shared deploy script, by a logical name the caller gives (for example
  ``"deploy-app.sh"``), never by its absolute path;
- the resolved inputs of the scope (environment name, account ID, region,
  backend names), as canonical JSON with sorted keys.

It is the same on every machine for the same commit and configuration:

- Line endings: a file whose bytes decode as UTF-8 is text, and its CRLF and
  lone CR are hashed as LF. Anything else is binary and hashed as is. (A
  Windows checkout with ``core.autocrlf=true`` therefore matches Linux CI.)
- File modes, timestamps, ownership and the checkout path are not hashed.
- Files a checkout or a run may leave behind are skipped: ``.terraform/``,
  state (``*.tfstate*``, ``terraform.tfstate.d/``), plan files (``*.tfplan``,
  ``*.tfplan.json``, ``tfplan``), ``crash.log`` and editor or merge litter
  (see :data:`IGNORED_NAMES`, :data:`IGNORED_DIRS`), and ``.terraform.lock.hcl``:
  ``terraform init`` writes it on every administrator's machine, and the
  repository ignores it (it cannot be generated without the provider registry),
  so hashing it would make a laptop and the pipeline's clean checkout disagree.
  The provider versions are still pinned by ``required_providers``, which is
  hashed. Once the lock files are committed, drop the name from IGNORED_NAMES.
- Symbolic links are followed (a linked module directory is hashed under the
  link's path); a directory reached twice through links is hashed once.

Frame format (version 1): the ASCII header ``runbook-fingerprint/1\\n``, then per
part one kind byte (``F`` root file, ``S`` shared script, ``I`` inputs), the
name's length as 8 bytes big-endian, the UTF-8 name, the content's length as 8
bytes big-endian, the content. Root files come first in path order, then shared
scripts in name order, then the inputs. Changing this format changes every
fingerprint, so every scope then shows as pending until it is applied again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runbook.config import shown_path
from runbook.errors import RunbookError

FORMAT_HEADER = b"runbook-fingerprint/1\n"

#: Directory names never descended into (matched against the name alone, at any depth).
IGNORED_DIRS = frozenset({".terraform", "terraform.tfstate.d", ".git", "__pycache__", ".idea", ".vscode"})

#: File name patterns never hashed (``fnmatch``, case-sensitive, matched against the name alone).
IGNORED_NAMES = (
    "*.tfstate",
    "*.tfstate.*",  # terraform.tfstate.backup, .terraform.tfstate.lock.info
    "*.tfplan",
    "*.tfplan.json",
    "tfplan",
    "crash.log",
    ".terraform.lock.hcl",
    "*~",
    "*.swp",
    "*.swo",
    ".#*",
    "#*#",
    ".DS_Store",
    "*.orig",
    "*.rej",
)

@dataclass(frozen=True)
class Part:
    """One hashed part, for a debug print that shows why two machines disagree.

    Attributes:
        kind: ``"root"`` (a root module file), ``"shared"`` (a shared script) or ``"inputs"``.
        name: the relative POSIX path, the shared script's logical name, or ``"inputs"``.
        size: bytes hashed, after line-ending normalisation.
        sha256: 64-character hex SHA-256 of those bytes alone.
    """

    kind: str
    name: str
    size: int
    sha256: str


def compute(root_dir: str | os.PathLike[str], shared_files: Mapping[str, str | os.PathLike[str]],
            inputs: Mapping[str, str]) -> str:
    """Fingerprint of one scope's IAM apply.

    Args:
        root_dir: the Terraform root module directory, for example
            ``iam/terraform/environment-specific/main`` (relative to the working directory, or absolute).
        shared_files: logical name -> path of each shared deploy script, for example
            ``{"deploy-app.sh": "iam/terraform/shared/deploy-app.sh"}``. Only the name and the
            content are hashed. May be empty.
        inputs: the resolved inputs of the scope, ``str -> str`` (environment name, account ID,
            region, state bucket, lock table, state key).

    Returns the 64-character lowercase hex SHA-256 (format described in the module docstring).

    Raises RunbookError when ``root_dir`` does not exist, is not a directory, holds no ``*.tf``
    file, or a file cannot be read; or when a shared script is missing. Raises TypeError when an
    input key or value is not a str (a bug in the caller, not something a user can cause).
    """
    digest = hashlib.sha256(FORMAT_HEADER)
    for kind, name, content in _parts(root_dir, shared_files, inputs):
        encoded = name.encode("utf-8")
        digest.update(kind)
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        digest.update(len(content).to_bytes(8, "big"))
        digest.update(content)
    return digest.hexdigest()


def describe(root_dir: str | os.PathLike[str], shared_files: Mapping[str, str | os.PathLike[str]],
             inputs: Mapping[str, str]) -> list[Part]:
    """Every part :func:`compute` hashes, in hashing order, each with its own SHA-256.

    Same arguments and errors as :func:`compute`. Print it on two machines and compare the
    lines to find the file (or input) that makes their fingerprints differ.
    """
    kinds = {b"F": "root", b"S": "shared", b"I": "inputs"}
    return [Part(kinds[kind], name, len(content), hashlib.sha256(content).hexdigest())
            for kind, name, content in _parts(root_dir, shared_files, inputs)]


def root_files(root_dir: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths of the root module files that are hashed, sorted.

    Raises RunbookError as :func:`compute` does for the root directory.
    """
    return [rel for rel, _ in _walk(_check_root(root_dir))]


def canonical_inputs(inputs: Mapping[str, str]) -> bytes:
    """The inputs as hashed: compact JSON, sorted keys, non-ASCII kept as UTF-8.

    Raises TypeError when a key or value is not a str.
    """
    for key, value in inputs.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"fingerprint inputs must be str -> str, got {key!r}: {value!r}")
    return json.dumps(dict(inputs), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def normalise(content: bytes) -> bytes:
    """Bytes as hashed: if *content* decodes as UTF-8, CRLF and lone CR become LF; else unchanged."""
    if b"\r" not in content:
        return content
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return content
    # A CR byte never occurs inside a multi-byte UTF-8 sequence, so replacing bytes is safe.
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _parts(root_dir, shared_files, inputs):
    """Yield ``(kind byte, name, normalised content)`` in hashing order."""
    canonical = canonical_inputs(inputs)  # type errors before any file is read
    root = _check_root(root_dir)
    files = _walk(root)
    if not any(rel.endswith(".tf") for rel, _ in files):
        raise RunbookError(
            f"The Terraform root module directory {root} holds no .tf file",
            where=f"{shown_path()}, field terraform.roots.*",
            fix="point terraform.roots.* at the directory that holds the module's main.tf",
        )
    for rel, path in files:
        yield b"F", rel, normalise(_read(path))
    for name in sorted(shared_files):
        path = Path(shared_files[name])
        if not path.is_file():
            raise RunbookError(
                f"The shared deploy script {name!r} is missing: {path.absolute()} is not a file",
                where=str(path),
                fix="git checkout -- " + str(path),
            )
        yield b"S", name, normalise(_read(path))
    yield b"I", "inputs", canonical


def _check_root(root_dir) -> Path:
    root = Path(root_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise RunbookError(
            f"The Terraform root module directory {root.absolute()} {what}",
            where=f"{shown_path()}, field terraform.roots.*",
            fix=f"correct terraform.roots.* in {shown_path()}, or run from the repository root",
        )
    return root


def _ignored_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_NAMES)


def _walk(root: Path) -> list[tuple[str, str]]:
    """``(relative POSIX path in NFC, filesystem path)`` of every hashed file, sorted by the former."""
    found: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS and not _ignored_name(d)]
        rel_dir = os.path.relpath(dirpath, top)
        for name in filenames:
            if _ignored_name(name):
                continue
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            if os.sep != "/":
                rel = rel.replace(os.sep, "/")
            found.append((unicodedata.normalize("NFC", rel), path))
    found.sort()
    return found


def _read(path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise RunbookError(
            f"Cannot read {path} to compute the IAM fingerprint: {error.strerror or error}",
            where=str(path),
            fix=f"ls -l {path}  (make it readable, or delete it if it is a dangling link)",
        ) from error
