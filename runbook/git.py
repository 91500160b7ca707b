"""Git facts the runbook checks before it changes anything, and the snapshot of a commit it applies.

All calls run the ``git`` command in a given working directory (default: the current one) and raise
RunbookError with the fix when git is missing or the folder is not a checkout.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import RunbookError

REMOTE = "origin"


def _git(*args: str, cwd: str | os.PathLike | None = None, timeout_s: float = 60.0, text: bool = True,
         stdin: bytes | None = None):
    """Run ``git ARGS`` in *cwd* (with *stdin*); its standard output (str, or bytes when not *text*). Raises
    RunbookError."""
    if shutil.which("git") is None:
        raise RunbookError("git is not installed or not on PATH", id="git-missing",
                           fix="install git (apt-get install git)")
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=timeout_s, input=stdin,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise RunbookError(f"`git {' '.join(args)}` did not finish within {timeout_s:.0f} s", id="git-failed",
                           fix="check your network and the remote with `git remote -v`, then try again") from None
    if done.returncode != 0:
        raise GitCommandError(args, done.stderr.decode("utf-8", "replace").strip())
    return done.stdout.decode("utf-8", "replace") if text else done.stdout


class GitCommandError(RunbookError):
    """A git command failed; ``stderr`` holds git's own words."""

    def __init__(self, args: tuple, stderr: str):
        self.stderr = stderr
        if "not a git repository" in stderr:
            super().__init__("This folder is not a git checkout; the runbook must run from a clone of the project",
                             id="not-a-git-checkout", where=os.getcwd(),
                             fix="cd into your clone of the repository and run the command again")
        else:
            super().__init__(f"`git {' '.join(args)}` failed: {stderr or 'no message'}", id="git-failed")


@dataclass(frozen=True)
class Checkout:
    """What the local checkout looks like: ``branch`` (None when HEAD is detached), ``head`` (the commit, 40 or
    64 hex) and ``changes``: the paths that differ from HEAD (untracked files included, ignored ones not)."""

    branch: str | None
    head: str
    changes: tuple[str, ...]

    @property
    def detached(self) -> bool:
        """HEAD is not on a branch."""
        return self.branch is None

    def changed_under(self, paths: Iterable[str]) -> list[str]:
        """The changed paths that lie in one of the folders or files *paths* (repository-relative, POSIX)."""
        return [c for c in self.changes if any(c == p or c.startswith(p.rstrip("/") + "/") for p in paths)]


def inspect(cwd: str | os.PathLike | None = None) -> Checkout:
    """Branch, HEAD commit and uncommitted changes, with one ``git status --porcelain=v2 --branch -z``
    (https://git-scm.com/docs/git-status#_porcelain_format_version_2). Paths are relative to the top."""
    return parse_status(_git("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal", cwd=cwd))


def parse_status(out: str) -> Checkout:
    """The :class:`Checkout` that ``git status --porcelain=v2 --branch -z`` printed as *out*."""
    head = branch = None
    changes: list[str] = []
    fields = iter(out.split("\0"))
    for entry in fields:
        if entry.startswith("# branch.oid "):
            head = entry.split(" ", 2)[2]
        elif entry.startswith("# branch.head "):
            branch = entry.split(" ", 2)[2]
        elif entry[:2] in ("1 ", "2 ", "u ", "? "):
            changes.append(entry.split(" ", {"1": 8, "2": 9, "u": 10, "?": 1}[entry[0]])[-1])
            if entry[0] == "2":
                next(fields, None)  # a rename's original path
    if not head or head == "(initial)":
        raise RunbookError("This checkout has no commit yet", id="git-failed", fix="commit, then run the command again")
    return Checkout(None if branch == "(detached)" else branch, head, tuple(changes))


def trees(commit: str, paths: Iterable[str], top: str | os.PathLike) -> dict[str, str | None]:
    """The object id of each of *paths* (folders, or files; relative to *top*, the top of the repository, POSIX)
    in *commit*, None where the commit has no such path: what ``git rev-parse COMMIT:PATH`` prints, for all of
    them with one ``git ls-tree`` call."""
    paths = list(dict.fromkeys(paths))
    out = _git("--literal-pathspecs", "ls-tree", "-z", commit, "--", *paths, cwd=top)
    found = {}
    for entry in filter(None, out.split("\0")):
        meta, _, path = entry.partition("\t")
        found[path] = meta.split(" ")[2]
    return {path: found.get(path.rstrip("/")) for path in paths}


def export(commit: str, paths: Iterable[str], dest: Path, top: str | os.PathLike) -> None:
    """Write the folders *paths* (relative to *top*, the top of the repository) of *commit* into *dest* (which
    must be empty), exactly as the commit holds them: each blob's bytes (``git cat-file --batch``), with its
    executable bit. No attribute applies (``export-ignore``, ``export-subst``, end-of-line conversion, filters:
    https://git-scm.com/docs/gitattributes), from the commit or from ``.git/info/attributes``, so the snapshot is
    the tree the fingerprint names; nothing ignored, untracked or edited arrives, and no submodule's content.

    Raises RunbookError (``reference-leaves-repository``) for a symbolic link that points out of *dest*:
    Terraform would read outside the commit through it.
    """
    present = [p for p in paths if p]
    listing = _git("--literal-pathspecs", "ls-tree", "-r", "-z", commit, "--", *present, cwd=top) if present else ""
    blobs = []  # (mode, object id, path); a submodule is a commit entry, and has no content here
    for meta, _, path in (entry.partition("\t") for entry in listing.split("\0") if entry):
        mode, kind, oid = meta.split(" ")
        if kind == "blob":
            blobs.append((mode, oid, path))
    data = _git("cat-file", "--batch", cwd=top, text=False, stdin="".join(f"{oid}\n" for _, oid, _ in blobs).encode())
    at = 0
    for mode, _, path in blobs:
        header_end = data.index(b"\n", at)
        size = int(data[at:header_end].split()[2])
        body, at = data[header_end + 1:header_end + 1 + size], header_end + 2 + size
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":  # a symbolic link: its blob is the link's text
            link = body.decode("utf-8", "surrogateescape")
            if posixpath.isabs(link) or posixpath.normpath(posixpath.join(posixpath.dirname(path), link)) \
                    .split("/")[0] == "..":
                raise RunbookError(
                    f"{path} in commit {commit[:12]} is a symbolic link to {link}, outside the repository: Terraform "
                    "would read what the commit does not hold", id="reference-leaves-repository", where=path,
                    fix=f"replace the link with the files it points at, and commit: git rm {shlex.quote(path)}")
            target.symlink_to(link)
        else:
            target.write_bytes(body)
            target.chmod(0o755 if mode == "100755" else 0o644)


def head_commit(cwd: str | os.PathLike | None = None) -> str:
    """The commit SHA of HEAD."""
    return _git("rev-parse", "HEAD", cwd=cwd).strip()


def commit_time(rev: str = "HEAD", cwd: str | os.PathLike | None = None) -> float:
    """The committer time of *rev* in seconds since the epoch (when it was made, amended or rebased)."""
    return float(_git("show", "-s", "--format=%ct", rev, cwd=cwd).strip())


def remote_commit(branch: str, *, fetch: bool, cwd: str | os.PathLike | None = None,
                  remote: str = REMOTE) -> str | None:
    """The commit of ``<remote>/<branch>``: after ``git fetch`` when *fetch*, else as last fetched.

    Returns None when the remote branch does not exist (or was never fetched).
    Raises RunbookError when the fetch fails (network, authentication).
    """
    if fetch:
        try:
            _git("fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}", cwd=cwd)
        except GitCommandError as exc:
            if "couldn't find remote ref" in exc.stderr:
                return None
            raise RunbookError(f"`git fetch {remote} {branch}` failed: {exc.stderr}", id="git-failed",
                               fix=f"check access to the remote (`git remote -v`, `git fetch {remote}`) and try "
                                   "again") from exc
    try:
        return _git("rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{branch}", cwd=cwd).strip()
    except GitCommandError:
        return None


@dataclass(frozen=True)
class TeamRemote:
    """The remote that holds the team's branches: its name and why it was chosen (words for messages)."""

    name: str
    why: str


def same_repository(a: str, b: str) -> bool:
    """Whether two git URLs name one repository: scheme, user, ``.git`` suffix, trailing slashes and
    case of the host and path aside (``git@github.com:acme/api.git`` = ``https://github.com/acme/api``);
    local paths are compared after resolving symlinks."""
    return _repository_key(a) == _repository_key(b)


def _repository_key(url: str) -> str:
    url = url.strip()
    if url.startswith("file://"):
        url = urllib.parse.unquote(url[len("file://"):])
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        parts = urllib.parse.urlsplit(url)
        host, path = (parts.hostname or "").lower(), parts.path
    elif re.match(r"^(?:[^@/]+@)?[^/:]+:(?!/)", url) and not os.path.exists(url):  # scp-like: git@host:org/repo
        host, path = url.split("@", 1)[-1].split(":", 1)
        host = host.lower()
    else:
        return os.path.realpath(url).rstrip("/").removesuffix(".git")
    return f"{host}/{path.strip('/').removesuffix('.git').lower()}"


def _remotes(branch: str, cwd: str | os.PathLike | None) -> tuple[dict[str, str], str | None]:
    """Every remote of the checkout (name -> fetch URL, ``remote.<name>.url``) and the remote *branch*
    tracks (``branch.<branch>.remote``, or None), read with one ``git config`` call."""
    try:
        out = _git("config", "--get-regexp", rf"^(remote\..*\.url|branch\.{re.escape(branch)}\.remote)$", cwd=cwd)
    except GitCommandError as exc:
        if exc.stderr:
            raise
        return {}, None  # git config exits 1 without a word when nothing matches
    urls, tracked = {}, None
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key.startswith("remote.") and key.endswith(".url"):
            urls[key[len("remote."):-len(".url")]] = value
        else:
            tracked = value or None
    return urls, tracked


def team_remote(branch: str, repository: str | None = None, *, required: bool = False,
                cwd: str | os.PathLike | None = None) -> TeamRemote:
    """The remote whose *branch* is the team's branch, the one the IAM must be applied from.

    In order: the remote whose URL is *repository* (the team's repository: config field ``git.remote``,
    else the repository of the CircleCI project slug), preferring the branch's upstream, then ``origin``
    when several match; else the remote *branch* tracks; else ``origin``; else the only remote. A stale
    fork as ``origin`` beside the team's repository as ``upstream`` therefore never stands in for the
    team's branch when the repository is known.

    Args:
        branch: the environment's branch, e.g. "staging".
        repository: the team's repository URL, or None.
        required: *repository* was configured explicitly (``git.remote``): refuse when no remote points at
            it rather than fall back.
        cwd: the checkout.

    Raises RunbookError when the checkout has no remote, when *required* and no remote matches, or when
    nothing tells several remotes apart. Remote URLs are never printed (they may carry a token).
    """
    urls, tracked = _remotes(branch, cwd)
    names = ", ".join(sorted(urls)) or "none"
    if repository:
        matching = sorted(name for name, url in urls.items() if same_repository(url, repository))
        if matching:
            name = tracked if tracked in matching else ("origin" if "origin" in matching else matching[0])
            return TeamRemote(name, f"its URL is the team's repository {repository}")
        if required:
            raise RunbookError(
                f"No git remote of this checkout points at the team's repository {repository} (remotes: {names}); "
                f"the IAM must be applied from the team's {branch!r}, not a fork's", id="team-remote-unknown",
                where="config field git.remote", fix=f"git remote add upstream {shlex.quote(repository)} && git fetch "
                                                     "upstream")
    if tracked and tracked in urls:
        return TeamRemote(tracked, f"the remote that branch {branch!r} tracks; set git.remote in the configuration to "
                                   "pin the team's repository")
    if REMOTE in urls or len(urls) == 1:
        return TeamRemote(REMOTE if REMOTE in urls else next(iter(urls)),
                          "the default remote; set git.remote in the configuration to pin the team's repository")
    if not urls:
        raise RunbookError("This checkout has no git remote, so nothing shows what the team merged",
                           id="team-remote-unknown",
                           fix="git remote add origin <URL of the team's repository> && git fetch origin")
    raise RunbookError(
        f"Cannot tell which git remote is the team's repository (remotes: {names}; {branch!r} tracks none of them)",
        id="team-remote-unknown", where="config field git.remote",
        fix=f"set git.remote to the team's repository URL, or git branch --set-upstream-to=<remote>/"
            f"{shlex.quote(branch)} {shlex.quote(branch)}")
