"""A snapshot of the commit for one scope: exactly the folders it may read, in a working folder of its own (one
per checkout and scope under ``runbook/work`` in the user's cache directory, ``XDG_CACHE_HOME``:
https://specifications.freedesktop.org/basedir-spec/latest/; locked for the run, keeping ``.terraform``). Plan
and apply run there, never in the working tree (ARCHITECTURE.md, "Fingerprint and snapshot"). Remote module
sources must be pinned: the ``.tf`` files with a module block are read with python-hcl2
(https://github.com/amplify-education/python-hcl2).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from runbook import git
from runbook.config import PROJECT_ROOT
from runbook.errors import RunbookError
from runbook.scopes import DEPLOY_SCRIPT, Scope

_held: dict[Path, int] = {}  # working folder -> the descriptor of its lock, held until the process exits
# A registry module address: [host/]namespace/name/provider[//subdir]
# (https://developer.hashicorp.com/terraform/language/modules/sources#terraform-registry).
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9.-]+\.[A-Za-z0-9-]+(?::[0-9]+)?/)?"
                       r"[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9]+(?://[^?]*)?$")


@dataclass(frozen=True)
class Snapshot:
    """A scope's working folder: ``path`` (laid out like the repository), ``root`` (its root module) and
    ``script`` (its ``deploy-app.sh``)."""

    path: Path
    root: Path
    script: Path

    @classmethod
    def at(cls, path: Path, scope: Scope) -> Snapshot:
        """The snapshot of *scope* laid out in *path*."""
        return cls(path, path / scope.root, path / DEPLOY_SCRIPT)


def folder(scope: Scope) -> Path:
    """The working folder of *scope* in this checkout (see the module docstring)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runbook" / "work"
    checkout = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
    return base / checkout / (f"env-{scope.name}" if scope.environment else f"account-{scope.account.name}")


def leftovers(scope: Scope, command: str) -> RunbookError | None:
    """What a failed Terraform run left in *scope*'s working folder that must be dealt with first, or None.

    ``errored.tfstate``: Terraform applied but could not write the state to the backend; that file is the only
    copy of the new state (https://developer.hashicorp.com/terraform/cli/commands/state/push). ``crash.log``:
    Terraform crashed; the state may be partial and its lock still held. *command* is the runbook command to
    run afterwards.
    """
    root = folder(scope) / scope.root
    profile = f"AWS_PROFILE={shlex.quote(scope.account.profile)} " if scope.account.profile else ""
    where = shlex.quote(str(root))
    if (root / "errored.tfstate").exists():
        return RunbookError(
            f"{root}/errored.tfstate is there: an earlier apply of {scope.label} changed resources but could not save "
            "the state to S3, and this file is the only copy of the new state. Do not delete it: push it to the "
            "backend, then run again (if the push says the state is locked, `inv iam.unlock` releases the lock of the "
            "run that died)", id="errored-tfstate", where=str(root / "errored.tfstate"),
            fix=f"cd {where} && {profile}terraform state push errored.tfstate && rm errored.tfstate && cd - && "
                f"{command}")
    if (root / "crash.log").exists():
        return RunbookError(
            f"{root}/crash.log is there: Terraform crashed during an earlier run of {scope.label}, which may have left "
            "the state partly updated and its lock held", id="terraform-crashed", where=str(root / "crash.log"),
            fix="read it (and report a Terraform panic upstream), then move it away and run again (it plans afresh "
                "from the saved state; a lock left held is reported with its unlock command): mv "
                f"{shlex.quote(str(root / 'crash.log'))} \"$HOME/terraform-crash-$(date +%s).log\" && {command}")
    return None


def take(scope: Scope, commit: str, trees: dict[str, str | None], into: Path | None = None) -> Snapshot:
    """Refresh *scope*'s working folder from *commit*: the folders of :attr:`Scope.paths` that the commit has
    (*trees*: path -> tree id), keeping the root module's ``.terraform`` but not its selected workspace. With
    *into* (an empty folder: a dry run's temporary one) the snapshot goes there, and the working folder is left
    alone.

    Raises RunbookError when another run on this machine holds the folder (``snapshot-busy``), when a symbolic
    link of the commit points out of it (``reference-leaves-repository``), or when the deploy script has CR line
    endings in the commit (``crlf-line-endings``).
    """
    path = into or folder(scope)
    path.parent.mkdir(parents=True, exist_ok=True)
    if into is None and path not in _held:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunbookError(f"Another run on this machine is planning or applying {scope.label} (its working folder "
                               f"{path} is in use)", id="snapshot-busy", where=str(path),
                               fix="wait for that run to end (`pgrep -af 'inv '` shows it), then run again") from None
        _held[path] = fd
    kept, dot = path.parent / f".{path.name}.terraform", path / scope.root / ".terraform"
    shutil.rmtree(kept, ignore_errors=True)
    if dot.is_dir():
        dot.rename(kept)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, exist_ok=True)
    git.export(commit, [p for p, tree in trees.items() if tree], path, PROJECT_ROOT)
    if kept.is_dir():
        kept.rename(dot)
        (dot / "environment").unlink(missing_ok=True)  # the default workspace, always
    script = path / DEPLOY_SCRIPT
    if not script.is_file():
        raise RunbookError(f"{DEPLOY_SCRIPT} is not in commit {commit[:12]}", id="deploy-script-missing",
                           fix=f"restore it from an earlier commit (git checkout main -- {DEPLOY_SCRIPT}), and "
                               "commit")
    if b"\r" in script.read_bytes():
        raise RunbookError(f"{DEPLOY_SCRIPT} has Windows (CRLF) line endings in commit {commit[:12]}: bash would stop "
                           "it", id="crlf-line-endings", where=DEPLOY_SCRIPT,
                           fix=f"convert it to LF (dos2unix {DEPLOY_SCRIPT}), commit, and run again")
    return Snapshot.at(path, scope)


def unpinned_modules(snapshot: Snapshot, scope: Scope) -> list[str]:
    """Every remote module source of the snapshot's root module and shared modules that is not pinned, as a
    sentence naming the module and its file.

    A remote source must not change under the same text (and so under the same fingerprint): a registry module
    needs a ``version``, any other remote source (git, GitHub, Bitbucket, Mercurial, HTTP, S3, GCS) a ``ref=`` in
    its query (https://developer.hashicorp.com/terraform/language/modules/sources). Only a file with a module
    block is parsed (python-hcl2 costs about 0.1 s a file). Raises RunbookError (``tf-file-invalid``) for a file
    python-hcl2 cannot read.
    """
    problems = []
    folders = [snapshot.root, snapshot.path / scope.config.modules]
    files = sorted(p for base in folders if base.is_dir() for p in base.rglob("*.tf*")
                   if p.name.endswith((".tf", ".tf.json")) and ".terraform" not in p.parts)
    for tf in files:
        text, shown = tf.read_text(encoding="utf-8", errors="replace"), tf.relative_to(snapshot.path).as_posix()
        if tf.name.endswith(".json") or (_MODULE_BLOCK.search(text) and _REMOTE_SOURCE.search(text)):
            problems += [f"module {name} in {shown}: {problem}" for name, body in _modules(text, shown)
                         if (problem := _unpinned(_text(body.get("source", "")), "version" in body))]
    return problems


# Only a file with a module block (`module "name" {`) and a source that is not a local path can call a remote module:
# a module's source is a literal string (https://developer.hashicorp.com/terraform/language/modules/sources).
_MODULE_BLOCK = re.compile(r'(?m)^[ \t]*module[ \t]+"')
_REMOTE_SOURCE = re.compile(r'(?m)^[ \t]*source[ \t]*=[ \t]*"(?!\.\.?/)')


def _modules(text: str, shown: str) -> list[tuple[str, dict]]:
    """(name, body) of each module block of a ``.tf`` (python-hcl2) or ``.tf.json`` file."""
    import hcl2

    try:
        if shown.endswith(".json"):
            found = json.loads(text).get("module", {})
            blocks = found if isinstance(found, list) else [found]
        else:
            blocks = hcl2.loads(text).get("module", [])
    except Exception as exc:  # noqa: BLE001 - python-hcl2 raises lark's many exception types
        raise RunbookError(f"{shown} in this commit is not valid HCL ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]})", id="tf-file-invalid", where=shown,
                           fix=f"correct it (terraform fmt {shlex.quote(shown)} shows where), and commit") from exc
    return [(_text(name), body) for block in blocks if isinstance(block, dict) for name, body in block.items()
            if isinstance(body, dict)]


def _text(value: object) -> str:
    """A python-hcl2 string value without its quotes."""
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _unpinned(source: str, has_version: bool) -> str | None:
    """Why a module *source* may change under the same text, with the pin that fixes it; None when it cannot."""
    if source.startswith(("./", "../")):
        return None
    if not source.startswith(("github.com/", "bitbucket.org/")) and "::" not in source and _REGISTRY.match(source):
        return None if has_version else (f"the registry module {source!r} has no version constraint: a new release "
                                         'would be applied under the same fingerprint; add version = "1.2.3"')
    getter, _, address = source.rpartition("::") if "::" in source.split("/", 1)[0] else ("", "", source)
    if urllib.parse.parse_qs(urllib.parse.urlsplit(address).query).get("ref", [""])[0]:
        return None
    scheme, sep, rest = address.split("?", 1)[0].partition("://")
    repository = f"{scheme}{sep}{rest.split('//', 1)[0]}" if sep else scheme.split("//", 1)[0]
    repository = f"https://{repository}" if repository.startswith(("github.com/", "bitbucket.org/")) else repository
    return (f"the source {source!r} is not pinned (no ref=): a push to that repository would be applied under the "
            f"same fingerprint; pin it to a commit with ?ref=<full commit SHA> (git ls-remote "
            f"{shlex.quote(repository)} prints it), or copy the module into the shared modules folder"
            + (" (an S3, GCS or HTTP source cannot be pinned so)" if getter in ("s3", "gcs") or
               source.startswith(("http://", "https://")) else ""))
