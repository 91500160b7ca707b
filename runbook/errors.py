"""The one exception type a user ever sees.

Every failure a user can cause (bad configuration, wrong branch, wrong AWS
account, expired credentials, a missing tool, an API error) is raised as a
:class:`RunbookError`. The task layer turns it into a one-paragraph message
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations


class RunbookError(Exception):
    """An expected failure, explained for the person at the terminal.

    Args:
        what: what is wrong, one or two sentences ("HEAD is 1a2b3c4, origin/staging is 9f8e7d6").
        where: where it is: "config/environments.yml line 12, field accounts.main.id",
            a command, a URL. Optional.
        fix: the command or edit that fixes it ("git pull --ff-only"). Optional.
        code: the process exit code the task layer uses (default 1).

    ``str(error)`` gives the whole paragraph. Callers must never put a secret
    (token, AWS key) in any of the three texts.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None, code: int = 1):
        self.what = what.rstrip()
        self.where = where
        self.fix = fix
        self.code = code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The paragraph shown to the user: what, where, then the fix."""
        multiline = "\n" in self.what
        parts = [self.what if multiline or self.what.endswith((".", "?", "!", ":")) else self.what + "."]
        if self.where:
            parts.append(f"Where: {self.where}.")
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return ("\n" if multiline else " ").join(parts)


class Interrupted(RunbookError):
    """The user pressed Ctrl-C; ``what`` says what state was left behind. Exit code 130."""

    def __init__(self, what: str, *, fix: str | None = None):
        super().__init__(what, fix=fix, code=130)
