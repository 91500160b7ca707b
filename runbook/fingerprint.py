"""Fingerprint of what an IAM apply reads: files, local modules, scripts, inputs.

The fingerprint is a SHA-256 over five kinds of part, each framed so that no
byte can move from one part to another without changing the hash:

- every file of the Terraform root module, by its path relative to the root
  (POSIX separators, Unicode NFC) and its content;
- every file outside the root module that the apply reads, by its path relative
  to the top of the repository: each *local module* the configuration calls
  (``module "x" { source = "../../modules/x" }``), recursively (a module calling
  another module), as a whole directory; and each file named by a file-reading
  function (``file``, ``templatefile``, ``fileset``, ``filebase64``, ... see
  :data:`FILE_FUNCTIONS`) that does not already lie in a hashed directory;
- a file such a function names that does not exist, by its name alone (its
  absence is a fact of the commit, too);
- each deploy script (the shared one and the scope's entry point), by a logical
  name the caller gives (the repository-relative path), never by its absolute path;
- the resolved inputs of the scope (environment name, account ID, region,
  backend names), as canonical JSON with sorted keys.

The ``.tf`` files are read with python-hcl2 (a Lark grammar of HCL2,
https://github.com/amplify-education/python-hcl2), never with regular
expressions. Only the files of a module directory itself are configuration
(Terraform does not descend into sub-directories,
https://developer.hashicorp.com/terraform/language/files); a file whose bytes
contain neither ``module`` nor ``file`` cannot call a module or a file function
and is not parsed. Parse results are kept per process and in the runbook's
on-disk cache (:mod:`runbook.cache`), keyed by the content's SHA-256. A local
module source starts with ``./`` or ``../``
(https://developer.hashicorp.com/terraform/language/modules/sources#local-paths);
a remote source must be pinned (a registry module by ``version``, any other by ``?ref=``), and
that pin is hashed; an unpinned one is refused (:func:`_check_pinned`).
A path given to a file function is resolved the way Terraform does:
``${path.module}`` is the calling module's directory, ``${path.root}`` and
``${path.cwd}`` and a plain relative path are the root module's directory (the
deploy script runs Terraform there,
https://developer.hashicorp.com/terraform/language/expressions/references#filesystem-and-workspace-info).
When the path holds another expression (``"${path.module}/policies/${var.env}.json"``),
the whole directory before it is hashed. A path the runbook cannot place (no
directory before the expression, a heredoc, an absolute path) is refused with the
file and line of the reference.

Nothing outside the repository is ever read: a root module, a local module, a
file reference or a symbolic link that leaves the top of the repository is
refused (what is applied must be what this commit holds).

It is the same on every machine for the same commit and configuration:

- Line endings: a file whose bytes decode as UTF-8 is text, and its CRLF and
  lone CR are hashed as LF. Anything else is binary and hashed as is. (A
  Windows checkout with ``core.autocrlf=true`` therefore matches Linux CI; the
  deploy scripts must still be LF to run, see :func:`check_line_endings`.)
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
  A file Terraform loads (:func:`terraform_loads`: ``*.tf``, ``*.tf.json``, ``*.tfvars``,
  ``*.tfvars.json``) is never skipped, whatever its name looks like (``terraform.tfstate.auto.tfvars``).
- Symbolic links inside the repository are followed (a linked module directory
  is hashed under the link's path); a directory reached twice through links is
  hashed once.

Frame format (version 2): the ASCII header ``runbook-fingerprint/2\\n``, then per
part one kind byte (``F`` root file, ``M`` file outside the root, ``A`` absent
file, ``S`` deploy script, ``I`` inputs), the name's length as 8 bytes
big-endian, the UTF-8 name, the content's length as 8 bytes big-endian, the
content. Root files come first in path order, then files outside the root and
absent files together in name order, then scripts in name order, then the
inputs. Version 1 had no ``M`` and ``A`` parts and hashed the shared script
alone. Changing this format changes every fingerprint, so every scope then
shows as pending until it is applied again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
import shlex
import unicodedata
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from runbook.config import shown_path
from runbook.errors import RunbookError

FORMAT_HEADER = b"runbook-fingerprint/2\n"

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

#: Terraform functions that read a file or a directory by path; the path is their first argument
#: (https://developer.hashicorp.com/terraform/language/functions, section "Filesystem Functions").
FILE_FUNCTIONS = frozenset({
    "file", "fileexists", "fileset", "filebase64", "filemd5", "filesha1", "filesha256", "filesha512",
    "filebase64sha256", "filebase64sha512", "templatefile",
})

_KINDS = {b"F": "root", b"M": "outside", b"A": "absent", b"S": "shared", b"I": "inputs"}


@dataclass(frozen=True)
class Part:
    """One hashed part, for a debug print that shows why two machines disagree.

    Attributes:
        kind: ``"root"`` (a root module file), ``"outside"`` (a file outside the root module:
            a local module's, or one read with ``file()`` and the like), ``"absent"`` (a file a
            file function names that does not exist), ``"shared"`` (a deploy script) or ``"inputs"``.
        name: the path relative to the root (root) or to the repository (outside, absent), the
            script's logical name, or ``"inputs"``.
        size: bytes hashed, after line-ending normalisation.
        sha256: 64-character hex SHA-256 of those bytes alone.
    """

    kind: str
    name: str
    size: int
    sha256: str


def compute(root_dir: str | os.PathLike[str], shared_files: Mapping[str, str | os.PathLike[str]],
            inputs: Mapping[str, str], *, top: str | os.PathLike[str] | None = None) -> str:
    """Fingerprint of one scope's IAM apply.

    Args:
        root_dir: the Terraform root module directory, for example
            ``iam/terraform/environment-specific/main`` (relative to the working directory, or absolute).
        shared_files: logical name -> path of each deploy script, for example
            ``{"iam/terraform/bin/deploy-app.sh": "/checkout/iam/terraform/bin/deploy-app.sh"}``. Only the
            name and the content are hashed. May be empty.
        inputs: the resolved inputs of the scope, ``str -> str`` (environment name, account ID,
            region, state bucket, lock table, state key).
        top: the top of the repository: nothing outside it is read, and files outside the root
            module are named relative to it. Default: the nearest directory above *root_dir* that
            holds ``.git``, else *root_dir* itself.

    Returns the 64-character lowercase hex SHA-256 (format described in the module docstring).

    Raises RunbookError when ``root_dir`` does not exist, is not a directory, holds no ``*.tf``
    file, lies outside *top*, or a file cannot be read; when a local module, a file reference or
    a symbolic link leaves *top*, a local module is missing, a ``.tf`` file is not valid HCL, or
    a file reference cannot be placed (see the module docstring); or when a shared script is
    missing. Raises TypeError when an input key or value is not a str (a bug in the caller, not
    something a user can cause).
    """
    digest = hashlib.sha256(FORMAT_HEADER)
    for kind, name, content in _parts(root_dir, shared_files, inputs, top):
        encoded = name.encode("utf-8")
        digest.update(kind)
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        digest.update(len(content).to_bytes(8, "big"))
        digest.update(content)
    return digest.hexdigest()


def describe(root_dir: str | os.PathLike[str], shared_files: Mapping[str, str | os.PathLike[str]],
             inputs: Mapping[str, str], *, top: str | os.PathLike[str] | None = None) -> list[Part]:
    """Every part :func:`compute` hashes, in hashing order, each with its own SHA-256.

    Same arguments and errors as :func:`compute`. Print it on two machines and compare the
    lines to find the file (or input) that makes their fingerprints differ.
    """
    return [Part(_KINDS[kind], name, len(content), hashlib.sha256(content).hexdigest())
            for kind, name, content in _parts(root_dir, shared_files, inputs, top)]


def root_files(root_dir: str | os.PathLike[str], *, top: str | os.PathLike[str] | None = None) -> list[str]:
    """Relative POSIX paths of the root module files that are hashed, sorted.

    *top* as for :func:`compute`. Raises RunbookError as :func:`compute` does for the root directory.
    """
    root = _check_root(root_dir)
    return [rel for rel, _ in _walk(root, _Tree(_top(root, top), root))]


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


def inside(top: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether *path* lies in the directory *top*, both as written (``..`` resolved lexically) and
    after following symbolic links. A relative *path* is taken relative to the working directory."""
    top_abs, path_abs = os.path.abspath(top), os.path.abspath(path)
    if os.path.commonpath([top_abs, path_abs]) != top_abs:
        return False
    top_real, path_real = os.path.realpath(top), os.path.realpath(path)
    return os.path.commonpath([top_real, path_real]) == top_real


def check_line_endings(scripts: Mapping[str, str | os.PathLike[str]], *, top: str | os.PathLike[str]) -> None:
    """Refuse deploy scripts with CR line endings: bash reads ``set -o pipefail\\r`` and dies.

    Args:
        scripts: logical name -> path of each script bash will run (the shared deploy script and
            the entry points). A missing script is left to :func:`compute` to report.
        top: the top of the repository (the fix's commands are run there).

    Raises RunbookError naming every script with a CR byte and the commands that check it out
    again with LF endings (``core.autocrlf`` set to ``input``; the repository's ``.gitattributes``
    keeps ``*.sh`` LF from then on). Reads each script once (a few KB); no git call.
    """
    bad = []
    for name, path in sorted(scripts.items()):
        try:
            with open(path, "rb") as handle:
                if b"\r" in handle.read():
                    bad.append((name, os.path.relpath(os.path.abspath(path), os.path.abspath(top))))
        except OSError:
            continue
    if bad:
        paths = " ".join(shlex.quote(Path(rel).as_posix()) for _, rel in bad)
        raise RunbookError(
            f"The deploy script{'s' if len(bad) > 1 else ''} {', '.join(n for n, _ in bad)} "
            f"{'have' if len(bad) > 1 else 'has'} CR (Windows) line endings: bash would stop at the first "
            "line (set -euo pipefail) before Terraform runs. The checkout converted them (core.autocrlf=true "
            "without the repository's .gitattributes)",
            id="crlf-line-endings",
            where=", ".join(Path(rel).as_posix() for _, rel in bad),
            fix=f"git config core.autocrlf input && rm -f {paths} && git checkout -- {paths}",
        )


class _Tree:
    """What one fingerprint walks: the repository top, the root module, what was hashed so far."""

    def __init__(self, top: Path, root: Path):
        self.top = top
        self.root = root
        self.top_abs = os.path.abspath(top)
        self.root_rel = self.rel(root)
        self.dirs: list[str] = []  # repository-relative directories already hashed whole
        self.outside: dict[str, str | None] = {}  # repository-relative name -> path (None: absent)

    def rel(self, path) -> str:
        """*path* relative to the top, POSIX, ``..`` resolved lexically (``..`` first when outside)."""
        rel = os.path.relpath(os.path.abspath(path), self.top_abs)
        rel = rel.replace(os.sep, "/") if os.sep != "/" else rel
        return unicodedata.normalize("NFC", rel)

    def path(self, rel: str) -> str:
        return os.path.join(self.top_abs, *rel.split("/")) if rel != "." else self.top_abs

    def covered(self, rel: str) -> bool:
        return any(_under(rel, d) for d in (self.root_rel, *self.dirs))


def _under(rel: str, directory: str) -> bool:
    return directory == "." or rel == directory or rel.startswith(directory + "/")


def _parts(root_dir, shared_files, inputs, top):
    """Yield ``(kind byte, name, normalised content)`` in hashing order."""
    canonical = canonical_inputs(inputs)  # type errors before any file is read
    tree, contents = _gather(root_dir, top)
    for rel, _path, content in contents:
        yield b"F", rel, content
    for name in sorted(tree.outside):
        path = tree.outside[name]
        if path is None:
            yield b"A", name, b""
        else:
            yield b"M", name, normalise(_read(path))
    for name, path in _scripts(shared_files):
        yield b"S", name, normalise(_read(path))
    yield b"I", "inputs", canonical


def hashed_files(root_dir: str | os.PathLike[str], shared_files: Mapping[str, str | os.PathLike[str]], *,
                 top: str | os.PathLike[str] | None = None) -> list[str]:
    """Absolute paths of every file :func:`compute` hashes for these arguments, in hashing order:
    the root module's files, the files outside it (local modules, files read by ``file()`` and the
    like; an absent file is not listed), the deploy scripts. A path may pass through a symbolic
    link inside the repository.

    Same arguments (*inputs* aside) and errors as :func:`compute`; reads the ``.tf`` files it must
    follow, as :func:`compute` does (parse results are cached).
    """
    tree, contents = _gather(root_dir, top)
    paths = [os.path.abspath(path) for _rel, path, _content in contents]
    paths += [os.path.abspath(tree.outside[name]) for name in sorted(tree.outside) if tree.outside[name] is not None]
    paths += [os.path.abspath(path) for _name, path in _scripts(shared_files)]
    return paths


def _gather(root_dir, top) -> tuple[_Tree, list[tuple[str, str, bytes]]]:
    """Walk the root module and follow what it reads: the tree (files outside the root in
    ``tree.outside``) and ``(relative name, path, normalised content)`` of each root module file."""
    root = _check_root(root_dir)
    tree = _Tree(_top(root, top), root)
    if not inside(tree.top, root):
        raise RunbookError(
            f"The Terraform root module directory {root.absolute()} lies outside the repository "
            f"{tree.top_abs}: what is applied would not be what this commit holds",
            id="root-outside-repository",
            where=f"{shown_path()}, field terraform.roots.*",
            fix="point terraform.roots.* at a folder inside the repository, relative to its top "
                "(for example iam/terraform/environment-specific/main)",
        )
    files = _walk(root, tree)
    if not any(rel.endswith(".tf") for rel, _ in files):
        raise RunbookError(
            f"The Terraform root module directory {root} holds no .tf file",
            id="root-module-missing",
            where=f"{shown_path()}, field terraform.roots.*",
            fix="point terraform.roots.* at the directory that holds the module's main.tf",
        )
    contents = [(rel, path, normalise(_read(path))) for rel, path in files]
    _follow(tree, tree.root_rel, {rel: c for rel, _path, c in contents if "/" not in rel})
    return tree, contents


def _scripts(shared_files) -> list[tuple[str, Path]]:
    """``(logical name, path)`` of each deploy script in name order; raises RunbookError for a missing one."""
    found = []
    for name in sorted(shared_files):
        path = Path(shared_files[name])
        if not path.is_file():
            raise RunbookError(
                f"The deploy script {name!r} is missing: {path.absolute()} is not a file",
                id="deploy-script-missing",
                where=str(path),
                fix="git checkout -- " + shlex.quote(str(path)),
            )
        found.append((name, path))
    return found


def _top(root: Path, top) -> Path:
    if top is not None:
        return Path(top)
    for directory in (root.absolute(), *root.absolute().parents):
        if (directory / ".git").exists():
            return directory
    return root


def _follow(tree: _Tree, start: str, start_files: dict[str, bytes]) -> None:
    """Hash what the module at *start* reads outside the hashed directories, module by module."""
    queue = [(start, start_files)]
    seen = {os.path.realpath(tree.path(start))}
    while queue:
        module_rel, module_files = queue.pop()
        for name in sorted(module_files):
            if not (name.endswith(".tf") or name.endswith(".tf.json")):
                continue
            where = f"{module_rel}/{name}" if module_rel != "." else name
            for ref in _references(module_files[name], where):
                target = _place(tree, module_rel, ref, where)
                if target is None:
                    continue
                if ref.kind == "module":
                    real = os.path.realpath(tree.path(target))
                    if real in seen:
                        continue
                    seen.add(real)
                    queue.append((target, _module_files(tree, target, ref, where)))
                else:
                    if ref.function == "templatefile" and ref.complete:
                        _check_template(tree, target, ref, where)
                    if not tree.covered(target):
                        _add(tree, target, ref)


def _check_template(tree: _Tree, target: str, ref: _Ref, where: str) -> None:
    """Refuse a template that calls a file function itself: what it reads is not followed."""
    path = tree.path(target)
    if not os.path.isfile(path):
        return
    text = normalise(_read(path)).decode("utf-8", "replace")
    called = sorted(name for name in FILE_FUNCTIONS if f"{name}(" in text)
    if called:
        raise RunbookError(
            f"The template {target}, read by templatefile() at {where} line {ref.line}, calls {called[0]}() "
            "itself: the runbook does not follow what a template reads, so its fingerprint could not prove "
            "what is applied",
            id="file-reference-unclear",
            where=target,
            fix="read the file in the .tf file and pass its content to the template as a variable, e.g. "
                'templatefile("...", { policy = file("${path.module}/policy.json") })',
        )


def _module_files(tree: _Tree, target: str, ref: _Ref, where: str) -> dict[str, bytes]:
    """The top-level files of the local module at *target*, hashing its directory if not yet hashed."""
    path = tree.path(target)
    if not os.path.isdir(path):
        raise RunbookError(
            f"The local module {ref.text!r} called at {where} line {ref.line} is missing: {target} is not a directory",
            id="module-missing",
            where=f"{where} line {ref.line}",
            fix=f"restore it (git checkout -- {shlex.quote(target)}) or correct the module's source",
        )
    if not tree.covered(target):
        _add(tree, target, ref, directory=True)
    files = {}
    for name in sorted(os.listdir(path)):
        file_path = os.path.join(path, name)
        if (name.endswith(".tf") or name.endswith(".tf.json")) and os.path.isfile(file_path) \
                and not _ignored_name(name):
            files[name] = normalise(_read(file_path))
    return files


def _add(tree: _Tree, target: str, ref: _Ref, *, directory: bool = False) -> None:
    """Hash the file or directory *target* (repository-relative) as files outside the root."""
    path = tree.path(target)
    if directory or ref.function == "fileset" or os.path.isdir(path):
        if not os.path.isdir(path):
            tree.outside[target] = None
            return
        tree.dirs.append(target)
        for rel, file_path in _walk(Path(path), tree):
            tree.outside[f"{target}/{rel}" if target != "." else rel] = file_path
        # a file hashed earlier under this directory keeps one entry (same name, same path)
    elif os.path.isfile(path):
        tree.outside[target] = path
    else:
        tree.outside[target] = None


@dataclass(frozen=True)
class _Ref:
    """One reference found in a .tf file: a module call or a file function's path argument.

    ``kind`` is "module" or "file"; ``text`` the module source or the path as written; ``base``
    "module", "root" or "" (a literal path, relative to the root module's directory); ``known`` the
    literal path after the base; ``complete`` False when an expression follows ``known``;
    ``problem`` set when the reference cannot be placed at all; ``version`` a module call's
    ``version`` argument as written ("" when it has none).
    """

    kind: str
    line: int
    text: str
    function: str = ""
    base: str = ""
    known: str = ""
    complete: bool = True
    problem: str = ""
    version: str = ""


def _place(tree: _Tree, module_rel: str, ref: _Ref, where: str) -> str | None:
    """The repository-relative path *ref* reads, or None when it reads nothing in this repository
    (a registry or git module); raises RunbookError when it leaves the repository or cannot be placed."""
    at = f"{where} line {ref.line}" if ref.line else where
    if ref.kind == "module":
        if not (ref.text.startswith("./") or ref.text.startswith("../") or ref.text.startswith("/")):
            _check_pinned(ref, at)
            return None
        if ref.text.startswith("/"):
            _leaves(f"The local module source {ref.text!r}", at, "an absolute path")
        target = posixpath.normpath(posixpath.join(module_rel, ref.text))
        if target.startswith("..") or not inside(tree.top, tree.path(target)):
            _leaves(f"The local module source {ref.text!r}", at, f"it resolves to {target}")
        return target
    call = f"{ref.function}({ref.text})"
    if ref.problem or ref.known.startswith("/"):
        problem = ref.problem or "an absolute path"
        raise RunbookError(
            f"The runbook cannot tell which file {call} at {at} reads ({problem}), so its fingerprint "
            "could not prove what is applied",
            id="file-reference-unclear",
            where=at,
            fix='write the path as a literal under the module, e.g. "${path.module}/policies/x.json" '
                '(an expression may follow a directory: "${path.module}/policies/${var.environment}.json")',
        )
    base = module_rel if ref.base == "module" else tree.root_rel
    known = ref.known if ref.complete else ref.known.rpartition("/")[0]
    if not ref.complete and not ref.base and not known:
        raise RunbookError(
            f"The runbook cannot tell which file {call} at {at} reads (no directory before the expression "
            "in its path), so its fingerprint could not prove what is applied",
            id="file-reference-unclear",
            where=at,
            fix='put the files in a directory of the repository and name it before the expression, e.g. '
                '"${path.module}/policies/${var.environment}.json"',
        )
    target = posixpath.normpath(posixpath.join(base, known)) if known else base
    if target.startswith("..") or not inside(tree.top, tree.path(target)):
        _leaves(f"The path of {call}", at, f"it resolves to {target}")
    if not ref.complete and target == ".":
        raise RunbookError(
            f"The path of {call} at {at} may name any file of the repository: the runbook will not hash them all",
            id="file-reference-unclear",
            where=at,
            fix="keep the files the configuration reads in one directory and name it before the expression",
        )
    return target


#: A module registry address: ``[<HOSTNAME>/]<NAMESPACE>/<NAME>/<PROVIDER>[//<subdirectory>]``
#: (https://developer.hashicorp.com/terraform/language/modules/sources#terraform-registry).
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9.-]+\.[A-Za-z0-9-]+(?::[0-9]+)?/)?"
                       r"[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9]+(?://[^?]*)?$")


def _check_pinned(ref: _Ref, at: str) -> None:
    """Refuse a remote module source that may change under the same text (and so the same fingerprint):
    a registry module without a ``version`` constraint, any other remote source (git, GitHub,
    Bitbucket, Mercurial, HTTP, S3, GCS) without a ``ref=`` in its query
    (https://developer.hashicorp.com/terraform/language/modules/sources)."""
    source = ref.text
    if not source.startswith(("github.com/", "bitbucket.org/")) and "::" not in source \
            and _REGISTRY.match(source):
        if ref.version:
            return
        raise RunbookError(
            f"The registry module {source!r} called at {at} has no version constraint: a new release would be "
            "applied under the same fingerprint, so the applied record could not prove what was applied",
            id="module-source-unpinned",
            where=at,
            fix='add an exact version to the module block, e.g. version = "1.2.3", and commit it',
        )
    address = source.split("::", 1)[1] if "::" in source.split("/", 1)[0] else source
    query = urllib.parse.urlsplit(address).query
    if urllib.parse.parse_qs(query).get("ref", [""])[0]:
        return
    getter = source.split("::", 1)[0] if "::" in source.split("/", 1)[0] else ""
    pinned = f"{getter + '::' if getter else ''}{address}{'&' if query else '?'}ref=<full commit SHA>"
    if getter in ("s3", "gcs") or (not getter and source.startswith(("http://", "https://"))):
        fix = ("copy the module into the repository and call it by a local path, or publish it in a git "
               'repository and pin it: source = "git::https://<host>/<repository>.git?ref=<full commit SHA>"')
    else:
        fix = (f'pin it to a commit: source = "{pinned}" (git ls-remote {shlex.quote(_repository(address))} '
               "<tag or branch> prints the SHA), or copy the module into the repository and call it by a local path")
    raise RunbookError(
        f"The module source {source!r} at {at} is not pinned (no ref=): a push to that repository, or another "
        "file at that address, would be applied under the same fingerprint, so the applied record could not "
        "prove what was applied",
        id="module-source-unpinned",
        where=at,
        fix=fix,
    )


def _repository(address: str) -> str:
    """The repository a git module address names, without ``//subdirectory`` and query
    (``github.com/acme/x//roles?ref=v1`` -> ``https://github.com/acme/x``)."""
    repository = address.split("?", 1)[0]
    scheme, sep, rest = repository.partition("://")
    repository = f"{scheme}{sep}{rest.split('//', 1)[0]}" if sep else repository.split("//", 1)[0]
    if repository.startswith(("github.com/", "bitbucket.org/")):
        repository = f"https://{repository}"
    return repository


def _leaves(what: str, at: str, how: str):
    raise RunbookError(
        f"{what} at {at} leaves the repository ({how}): the apply would read files this commit does not hold",
        id="reference-leaves-repository",
        where=at,
        fix="copy what it names into the repository (for example under iam/modules/ or iam/policies/) "
            "and point the reference there, relative to the module (\"../modules/x\", \"${path.module}/...\")",
    )


# -- reading .tf files -------------------------------------------------------------------------

_REFERENCES: dict[tuple[str, str], list[_Ref]] = {}
_REFERENCES_VERSION = 2  # bump when _parse_hcl or _parse_json find something else in the same bytes


def _references(content: bytes, where: str) -> list[_Ref]:
    """Module calls and file function paths in one .tf (or .tf.json) file, parsed once per content."""
    if b"module" not in content and b"file" not in content:
        return []  # neither a module block nor a file function can be written without these bytes
    key = (hashlib.sha256(content).hexdigest(), where.endswith(".json") and "json" or "hcl")
    if key not in _REFERENCES:
        _REFERENCES[key] = _cached_parse(content, key, where)
    return _REFERENCES[key]


def _cached_parse(content: bytes, key: tuple[str, str], where: str) -> list[_Ref]:
    """Parse, or take what an earlier run found in the same bytes from the on-disk cache (importing
    the parser and building its grammar costs 0.1-0.3 s per command). The key holds the content's
    SHA-256, this module's format and the installed grammar file's size and time, so an entry is
    never stale."""
    from importlib.util import find_spec

    from runbook import cache

    try:
        spec = find_spec("hcl2")  # finds the package without importing it
        grammar = os.stat(os.path.join(os.path.dirname(spec.origin), "hcl2.lark"))
        parser = f"{grammar.st_size}:{grammar.st_mtime_ns}"
    except (AttributeError, TypeError, OSError, ValueError):
        parser = "?"
    disk_key = f"{key[0]}:{key[1]}:{FORMAT_HEADER.decode().strip()}:{_REFERENCES_VERSION}:{parser}"
    known = cache.get("tf-references", disk_key)
    if isinstance(known, list):
        try:
            return [_Ref(**fields) for fields in known]
        except TypeError:
            pass
    refs = _parse_json(content, where) if key[1] == "json" else _parse_hcl(content, where)
    cache.put("tf-references", disk_key, [asdict(ref) for ref in refs])
    return refs


def _parse_hcl(content: bytes, where: str, line_offset: int = 0) -> list[_Ref]:
    from hcl2.api import parses_to_tree
    from lark.exceptions import LarkError

    try:
        tree = parses_to_tree(content.decode("utf-8"))
    except (LarkError, UnicodeDecodeError, ValueError) as error:
        line = getattr(error, "line", None)
        raise RunbookError(
            f"{where} is not valid HCL, so the runbook cannot tell which modules and files it reads"
            f" ({type(error).__name__})",
            id="tf-file-invalid",
            where=f"{where}" + (f" line {line + line_offset}" if isinstance(line, int) and line > 0 else ""),
            fix=f"terraform -chdir={shlex.quote(posixpath.dirname(where) or '.')} validate",
        ) from None
    refs: list[_Ref] = []
    body = next((c for c in tree.children if _is(c, "body")), None)
    for block in (c for c in (body.children if body else []) if _is(c, "block")):
        if _name(block.children[0]) == "module":
            source = _attribute(block, "source")
            if source is not None:
                text, complete = _literal(source)
                version = _attribute(block, "version")
                written = "" if version is None else (_literal(version)[0] or "an expression")
                if complete:
                    refs.append(_Ref("module", _line(source, line_offset), text, version=written))
    for call in tree.find_data("function_call"):
        names = [c for c in call.children if _is(c, "identifier")]
        if len(names) != 1 or _name(names[0]) not in FILE_FUNCTIONS:
            continue  # provider::name::function is a provider's, not Terraform's
        arguments = next((c for c in call.children if _is(c, "arguments")), None)
        first = next((c for c in arguments.children if _tree(c)), None) if arguments else None
        if first is not None:
            refs.append(_file_ref(_name(names[0]), first, _line(call, line_offset)))
    for kind in ("heredoc_template", "heredoc_template_trim", "template_string"):
        for node in tree.find_data(kind):
            text = "".join(str(t) for t in node.scan_values(lambda v: True))
            if any(f"{name}(" in text for name in FILE_FUNCTIONS):
                refs.append(_Ref("file", _line(node, line_offset), "...", "file",
                                 problem="a file function inside a heredoc or template string; move the call "
                                         "into a local value"))
    return refs


def _parse_json(content: bytes, where: str) -> list[_Ref]:
    """Terraform's JSON syntax: module sources are plain strings; other strings are templates."""
    try:
        data = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RunbookError(f"{where} is not valid JSON ({error})", id="tf-file-invalid", where=where,
                           fix=f"terraform -chdir={shlex.quote(posixpath.dirname(where) or '.')} validate") from None
    refs: list[_Ref] = []
    modules = data.get("module") if isinstance(data, dict) else None
    for body in (modules.values() if isinstance(modules, dict) else []):
        for one in (body if isinstance(body, list) else [body]):
            if isinstance(one, dict) and isinstance(one.get("source"), str):
                version = one.get("version")
                refs.append(_Ref("module", 0, one["source"], version=str(version) if version else ""))
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and "${" in value and any(name in value for name in FILE_FUNCTIONS):
            hcl = f"x = {json.dumps(value)}\n".encode()
            refs.extend(r for r in _parse_hcl(hcl, where) if r.kind == "file")
    return refs


def _file_ref(function: str, argument, line: int) -> _Ref:
    pieces = _pieces(argument)
    if _is(_unwrap(argument), "string"):
        text = '"' + "".join(p if isinstance(p, str) else f"${{{p[0]}}}" for p in pieces) + '"'
    else:
        text = pieces[0][0]
    base = ""
    if pieces and not isinstance(pieces[0], str) and pieces[0][0] in ("path.module", "path.root", "path.cwd"):
        base = "module" if pieces[0][0] == "path.module" else "root"
        pieces = pieces[1:]
    known = ""
    complete = True
    for piece in pieces:
        if not isinstance(piece, str):
            complete = False
            break
        known += piece
    if base and known.startswith("/"):
        known = known[1:]
    if not base and not pieces:
        return _Ref("file", line, text, function, problem="an empty path")
    return _Ref("file", line, text, function, base, known, complete)


def _pieces(node) -> list:
    """A path expression as literal strings and ``(expression text,)`` tuples for what is not literal."""
    node = _unwrap(node)
    if _is(node, "string"):
        out: list = []
        for part in (c for c in node.children if _is(c, "string_part")):
            child = part.children[0]
            if _tree(child) and child.data == "interpolation":
                inner = next(c for c in child.children if _tree(c))
                out.append((_reference_text(inner),))
            elif _tree(child):
                out.append(("template directive",))
            elif child.type == "STRING_CHARS":
                out.append(_unescape(str(child)))
            elif child.type in ("ESCAPED_INTERPOLATION", "ESCAPED_DIRECTIVE"):
                out.append(str(child)[1:])
            else:
                out.append(("template directive",))
        return out
    return [(_reference_text(node),)]


def _reference_text(node) -> str:
    """``path.module`` for a two-part reference, else a short description of the expression."""
    node = _unwrap(node)
    if _is(node, "get_attr_expr_term"):
        head = _unwrap(node.children[0])
        attr = next((c for c in node.children if _is(c, "get_attr")), None)
        if _is(head, "identifier") and attr is not None:
            names = [c for c in attr.children if _is(c, "identifier")]
            if names:
                return f"{_name(head)}.{_name(names[0])}"
    return "an expression"


def _literal(node) -> tuple[str, bool]:
    pieces = _pieces(node)
    return "".join(p for p in pieces if isinstance(p, str)), all(isinstance(p, str) for p in pieces)


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, chars = [], iter(text)
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(simple.get(following, "\\" + following))
        else:
            out.append(char)
    return "".join(out)


def _attribute(block, name: str):
    body = next((c for c in block.children if _is(c, "body")), None)
    for attribute in (c for c in (body.children if body else []) if _is(c, "attribute")):
        if _name(attribute.children[0]) == name:
            return next((c for c in attribute.children[1:] if _tree(c)), None)
    return None


def _unwrap(node):
    while _is(node, "expr_term"):
        inner = [c for c in node.children if _tree(c)]
        if len(inner) != 1:
            break
        node = inner[0]
    return node


def _tree(node) -> bool:
    return hasattr(node, "data")


def _is(node, data: str) -> bool:
    return _tree(node) and node.data == data


def _name(node) -> str:
    if _tree(node):
        return "".join(str(t) for t in node.scan_values(lambda v: True)).strip()
    return str(node).strip()


def _line(node, offset: int) -> int:
    meta = getattr(node, "meta", None)
    return (meta.line + offset) if meta is not None and not meta.empty else 0


# -- walking directories -----------------------------------------------------------------------


def _check_root(root_dir) -> Path:
    root = Path(root_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise RunbookError(
            f"The Terraform root module directory {root.absolute()} {what}",
            id="root-module-missing",
            where=f"{shown_path()}, field terraform.roots.*",
            fix=f"correct terraform.roots.* in {shown_path()}, or run from the repository root",
        )
    return root


#: Name endings of the files Terraform loads from a module directory: configuration and overrides
#: (``*_override.tf``; Terraform skips only names starting with ``.``, and ``#...#``, ``...~``,
#: https://developer.hashicorp.com/terraform/language/files) and variable definitions
#: (``terraform.tfvars``, ``*.auto.tfvars``,
#: https://developer.hashicorp.com/terraform/language/values/variables#variable-definitions-tfvars-files).
#: Such a file is always hashed, whatever :data:`IGNORED_NAMES` (or a .gitignore) says.
CONFIGURATION_SUFFIXES = (".tf", ".tf.json")
VARIABLE_SUFFIXES = (".tfvars", ".tfvars.json")


def terraform_loads(name: str) -> bool:
    """Whether Terraform may load a file of this name (the name alone) from a module directory."""
    return name.endswith(VARIABLE_SUFFIXES) or (name.endswith(CONFIGURATION_SUFFIXES) and not name.startswith("."))


def _ignored_name(name: str) -> bool:
    if terraform_loads(name):
        return False  # "x.tfstate.y_override.tf" is loaded by Terraform, so it is hashed
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_NAMES)


def _walk(root: Path, tree: _Tree) -> list[tuple[str, str]]:
    """``(relative POSIX path in NFC, filesystem path)`` of every hashed file, sorted by the former.

    Follows symbolic links (a directory reached twice is walked once); raises RunbookError for a
    link that leaves the repository. ``os.scandir`` tells links apart without a system call per file."""
    found: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()
    top_real = os.path.realpath(tree.top)
    pending = [(os.fspath(root), "")]
    while pending:
        directory, rel_dir = pending.pop()
        real = os.path.realpath(directory)
        if real in seen_dirs:
            continue
        if os.path.commonpath([top_real, real]) != top_real:
            _link_leaves(tree, directory, real)
        seen_dirs.add(real)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # unreadable directory: os.walk skipped these too
        for entry in entries:
            name = entry.name
            if _ignored_name(name):
                continue
            rel = f"{rel_dir}{name}"
            if entry.is_dir():  # follows links
                if name not in IGNORED_DIRS:
                    pending.append((entry.path, rel + "/"))
                continue
            if entry.is_symlink() and os.path.commonpath([top_real, os.path.realpath(entry.path)]) != top_real:
                _link_leaves(tree, entry.path, os.path.realpath(entry.path))
            found.append((unicodedata.normalize("NFC", rel), entry.path))
    found.sort()
    return found


def _link_leaves(tree: _Tree, path: str, real: str):
    rel = tree.rel(path)
    raise RunbookError(
        f"{rel} is a symbolic link that leaves the repository (to {real}): the apply would read files "
        "this commit does not hold",
        id="reference-leaves-repository",
        where=rel,
        fix=f"replace the link with the files it points to and commit them: git rm {shlex.quote(rel)}",
    )


def _read(path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise RunbookError(
            f"Cannot read {path} to compute the IAM fingerprint: {error.strerror or error}",
            id="file-unreadable",
            where=str(path),
            fix=f"ls -l {shlex.quote(str(path))}  (make it readable, or delete it if it is a dangling link)",
        ) from error
