"""Git facts the runbook checks before it changes anything.

All calls run the ``git`` command in a given working directory (default: the
current one) and raise RunbookError with the fix when git is missing or the
folder is not a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from runbook.errors import RunbookError

REMOTE = "origin"


def _git(*args: str, cwd: str | os.PathLike | None = None, timeout_s: float = 60.0) -> str:
    if shutil.which("git") is None:
        raise RunbookError("git is not installed or not on PATH", fix="install git (apt-get install git)")
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
            fix="check your network and the remote with `git remote -v`, then try again",
        ) from None
    if done.returncode != 0:
        raise GitCommandError(args, done.stderr.strip())
    return done.stdout.strip()


class GitCommandError(RunbookError):
    """A git command failed; ``stderr`` holds git's own words."""

    def __init__(self, args: tuple, stderr: str):
        self.stderr = stderr
        if "not a git repository" in stderr:
            super().__init__(
                "This folder is not a git checkout; the runbook must run from a clone of the project",
                where=os.getcwd(),
                fix="cd into your clone of the repository and run the command again",
            )
        else:
            super().__init__(f"`git {' '.join(args)}` failed: {stderr or 'no message'}")


@dataclass(frozen=True)
class Checkout:
    """What the local checkout looks like: branch ("HEAD" when detached), commit, changed paths."""

    branch: str
    head: str
    changes: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.changes


def inspect(cwd: str | os.PathLike | None = None) -> Checkout:
    """Read branch, HEAD commit and uncommitted changes (untracked files included, ignored ones not)."""
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    head = _git("rev-parse", "HEAD", cwd=cwd)
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=cwd)
    return Checkout(branch=branch, head=head, changes=tuple(line for line in status.splitlines() if line))


def tracked_files(folder: str | os.PathLike) -> set[str]:
    """Paths (relative to *folder*, POSIX) of the files git tracks under *folder*."""
    out = _git("ls-files", "-z", "--", ".", cwd=folder)
    return {p for p in out.split("\0") if p}


def head_commit(cwd: str | os.PathLike | None = None) -> str:
    """The 40-hex commit SHA of HEAD."""
    return _git("rev-parse", "HEAD", cwd=cwd)


def remote_commit(branch: str, *, fetch: bool, cwd: str | os.PathLike | None = None) -> str | None:
    """The commit of ``origin/<branch>``: after ``git fetch`` when *fetch*, else as last fetched.

    Returns None when the remote branch does not exist (or was never fetched).
    Raises RunbookError when the fetch fails (network, authentication).
    """
    if fetch:
        try:
            _git("fetch", "--quiet", REMOTE, f"+refs/heads/{branch}:refs/remotes/{REMOTE}/{branch}", cwd=cwd)
        except GitCommandError as exc:
            if "couldn't find remote ref" in exc.stderr:
                return None
            raise RunbookError(
                f"`git fetch {REMOTE} {branch}` failed: {exc.stderr}",
                fix=f"check access to the remote (`git remote -v`, `git fetch {REMOTE}`) and try again",
            ) from None
    try:
        return _git("rev-parse", "--verify", "--quiet", f"refs/remotes/{REMOTE}/{branch}", cwd=cwd)
    except GitCommandError:
        return None


def commit_time(rev: str = "HEAD", cwd: str | os.PathLike | None = None) -> float:
    """The committer time of *rev* in seconds since the epoch (when it was made, amended or rebased)."""
    return float(_git("show", "-s", "--format=%ct", rev, cwd=cwd))
