"""Git facts the runbook checks before it changes anything.

All calls run the ``git`` command in a given working directory (default: the
current one) and raise RunbookError with the fix when git is missing or the
folder is not a checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass

from runbook.errors import RunbookError

REMOTE = "origin"
# CircleCI project slugs name the repository: "gh/ORG/REPO" (GitHub), "bb/ORG/REPO" (Bitbucket);
# "circleci/<id>/<id>" names none (CircleCI API v2 docs, "project-slug":
# https://circleci.com/docs/api-developers-guide/#getting-started-with-the-api).


def _git(*args: str, cwd: str | os.PathLike | None = None, timeout_s: float = 60.0, strip: bool = True) -> str:
    if shutil.which("git") is None:
        raise RunbookError("git is not installed or not on PATH",
                           id="git-missing", fix="install git (apt-get install git)")
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise RunbookError(
            f"`git {' '.join(args)}` did not finish within {timeout_s:.0f} s",
            id="git-failed",
            fix="check your network and the remote with `git remote -v`, then try again",
        ) from None
    if done.returncode != 0:
        raise GitCommandError(args, done.stderr.strip())
    return done.stdout.strip() if strip else done.stdout


class GitCommandError(RunbookError):
    """A git command failed; ``stderr`` holds git's own words."""

    def __init__(self, args: tuple, stderr: str):
        self.stderr = stderr
        if "not a git repository" in stderr:
            super().__init__(
                "This folder is not a git checkout; the runbook must run from a clone of the project",
                id="not-a-git-checkout",
                where=os.getcwd(),
                fix="cd into your clone of the repository and run the command again",
            )
        else:
            super().__init__(f"`git {' '.join(args)}` failed: {stderr or 'no message'}", id="git-failed")


@dataclass(frozen=True)
class Checkout:
    """What the local checkout looks like: branch ("HEAD" when detached), commit, changed paths."""

    branch: str
    head: str
    changes: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.changes

    @property
    def detached(self) -> bool:
        """HEAD names a commit, not a branch (``git rev-parse --abbrev-ref HEAD`` prints "HEAD")."""
        return self.branch == "HEAD"


def inspect(cwd: str | os.PathLike | None = None) -> Checkout:
    """Read branch, HEAD commit and uncommitted changes (untracked files included, ignored ones not)."""
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    head = _git("rev-parse", "HEAD", cwd=cwd)
    # Not stripped: each line starts with a two-column status that may be a space (" M README.md").
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=cwd, strip=False)
    return Checkout(branch=branch, head=head, changes=tuple(line for line in status.splitlines() if line))


def head_entries(paths: list[str], cwd: str | os.PathLike) -> dict[str, tuple[str, str, str]]:
    """HEAD's tree entries under *paths*, with one ``git ls-tree -r -z HEAD`` call.

    Args:
        paths: POSIX paths relative to *cwd* (the top of the repository): files or directories,
            taken literally (no pathspec magic or globs).
        cwd: the top of the repository.

    Returns repository-relative POSIX path -> ``(mode, type, object id)``, e.g.
    ``{"iam/x.tf": ("100644", "blob", "<40 hex>")}``; a submodule shows as one ``"commit"`` entry.
    Raises RunbookError when git fails.
    """
    if not paths:
        return {}
    out = _git("--literal-pathspecs", "ls-tree", "-r", "-z", "HEAD", "--", *paths, cwd=cwd, strip=False)
    entries = {}
    for record in out.split("\0"):
        if record:
            meta, _, path = record.partition("\t")
            mode, kind, oid = meta.split(" ")
            entries[path] = (mode, kind, oid)
    return entries


def blob_contents(oids: list[str], cwd: str | os.PathLike) -> dict[str, bytes]:
    """The content of each blob in *oids* (object ids), with one ``git cat-file --batch`` call.
    Raises RunbookError when git fails or an object is missing."""
    if not oids:
        return {}
    try:
        done = subprocess.run(["git", "cat-file", "--batch"], cwd=cwd, input="".join(f"{o}\n" for o in oids).encode(),
                              capture_output=True, timeout=60, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RunbookError(f"`git cat-file --batch` failed: {error}", id="git-failed",
                           fix="git fsck  (then run again)") from None
    if done.returncode != 0:
        raise GitCommandError(("cat-file", "--batch"), done.stderr.decode("utf-8", "replace").strip())
    contents, out, at = {}, done.stdout, 0
    for oid in oids:
        end = out.index(b"\n", at)
        header = out[at:end].decode("ascii", "replace").split(" ")
        if len(header) != 3:
            raise RunbookError(f"git has no object {oid} that HEAD names", id="git-failed", fix="git fsck")
        size = int(header[2])
        contents[oid] = out[end + 1:end + 1 + size]
        at = end + 1 + size + 1
    return contents


def blob_id(content: bytes, oid_length: int = 40) -> str:
    """The git object id *content* has as a blob: SHA-1 of ``blob <size>\\0<content>`` (SHA-256 in a
    repository whose ids are 64 hex digits, https://git-scm.com/docs/hash-function-transition)."""
    import hashlib

    digest = hashlib.sha1() if oid_length == 40 else hashlib.sha256()
    digest.update(b"blob %d\0" % len(content))
    digest.update(content)
    return digest.hexdigest()


def head_commit(cwd: str | os.PathLike | None = None) -> str:
    """The 40-hex commit SHA of HEAD."""
    return _git("rev-parse", "HEAD", cwd=cwd)


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
            raise RunbookError(
                f"`git fetch {remote} {branch}` failed: {exc.stderr}",
                id="git-failed",
                fix=f"check access to the remote (`git remote -v`, `git fetch {remote}`) and try again",
            ) from None
    try:
        return _git("rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{branch}", cwd=cwd)
    except GitCommandError:
        return None


def commit_time(rev: str = "HEAD", cwd: str | os.PathLike | None = None) -> float:
    """The committer time of *rev* in seconds since the epoch (when it was made, amended or rebased)."""
    return float(_git("show", "-s", "--format=%ct", rev, cwd=cwd))


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


def remotes(branch: str, cwd: str | os.PathLike | None = None) -> tuple[dict[str, str], str | None]:
    """Every remote of the checkout (name -> fetch URL, ``remote.<name>.url``) and the remote *branch*
    tracks (``branch.<branch>.remote``, or None), read with one ``git config`` call."""
    pattern = rf"^(remote\..*\.url|branch\.{re.escape(branch)}\.remote)$"
    try:
        out = _git("config", "--get-regexp", pattern, cwd=cwd)
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

    In order: the remote whose URL is *repository* (the team's repository: config field
    ``git.remote``, else the repository of the CircleCI project slug); preferring the branch's
    upstream, then ``origin`` when several match. Else the remote *branch* tracks; else
    ``origin``; else the only remote. A stale fork as ``origin`` beside the team's repository as
    ``upstream`` therefore never stands in for the team's branch when the repository is known.

    Args:
        branch: the environment's branch, e.g. "staging".
        repository: the team's repository URL, or None.
        required: *repository* was configured explicitly (``git.remote``): refuse when no remote
            points at it rather than fall back.
        cwd: the checkout.

    Raises RunbookError when the checkout has no remote, when *required* and no remote matches,
    or when nothing tells several remotes apart. Remote URLs are never printed (they may carry a
    token); only their names.
    """
    urls, tracked = remotes(branch, cwd)
    names = ", ".join(sorted(urls)) or "none"
    if repository:
        matching = sorted(name for name, url in urls.items() if same_repository(url, repository))
        if matching:
            name = tracked if tracked in matching else ("origin" if "origin" in matching else matching[0])
            return TeamRemote(name, f"its URL is the team's repository {repository}")
        if required:
            raise RunbookError(
                f"No git remote of this checkout points at the team's repository {repository} (remotes: {names}); "
                f"the IAM must be applied from the team's {branch!r}, not a fork's",
                id="team-remote-unknown",
                where="config field git.remote",
                fix=f"git remote add upstream {shlex.quote(repository)} && git fetch upstream",
            )
    if tracked and tracked in urls:
        return TeamRemote(tracked, f"the remote that branch {branch!r} tracks; set git.remote in the configuration to "
                                   "pin the team's repository")
    if REMOTE in urls or len(urls) == 1:
        name = REMOTE if REMOTE in urls else next(iter(urls))
        return TeamRemote(name, "the default remote; set git.remote in the configuration to pin the team's repository")
    if not urls:
        raise RunbookError(
            "This checkout has no git remote, so nothing shows what the team merged",
            id="team-remote-unknown",
            fix="git remote add origin <URL of the team's repository> && git fetch origin",
        )
    raise RunbookError(
        f"Cannot tell which git remote is the team's repository (remotes: {names}; {branch!r} tracks none of them)",
        id="team-remote-unknown",
        where="config field git.remote",
        fix="set git.remote to the team's repository URL, or git branch "
            f"--set-upstream-to=<remote>/{shlex.quote(branch)} {shlex.quote(branch)}",
    )
