"""The one exception type a user ever sees, and the exit codes.

Every failure a user can cause is a :class:`RunbookError` with a stable id (one section of TROUBLESHOOTING.md each):
the task layer prints its paragraph and exits with its code. Anything else is a defect: exit :data:`EXIT_BUG`.
"""

from __future__ import annotations

import re

TROUBLESHOOTING = "TROUBLESHOOTING.md"
ID_FORM = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
"""What an id looks like: short, lower-case, kebab-case ("state-lock-held")."""

# The exit codes, in one place (README.md, "Exit codes", explains them).
EXIT_FAILED = 1  # refused or failed: the message says why and what to run
EXIT_CHANGES = 2  # `inv iam.plan`: the plan has changes (Terraform's own -detailed-exitcode uses 2 too)
EXIT_NOT_CURRENT = 3  # `inv iam.status --check`: something is not current
EXIT_WOULD_STOP = 4  # a dry run found what would stop the real run
EXIT_ON_HOLD = 5  # a watch stopped because the workflow waits at an approval job
EXIT_BUG = 70  # a defect of the runbook (BSD sysexits EX_SOFTWARE): please report it
EXIT_LOCKED = 75  # another run holds the Terraform state lock (BSD sysexits EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C; SIGTERM gives 143 and SIGHUP 129 (128 + the signal's number)


class RunbookError(Exception):
    """An expected failure, explained for the person at the terminal.

    Args:
        what: what is wrong, one or two sentences ("HEAD is 1a2b3c4, origin/staging is 9f8e7d6").
        id: the stable id of this kind of failure ("wrong-branch"), the heading of its section in
            TROUBLESHOOTING.md; required, except for subclasses that set ``default_id``.
        where: where it is: "config/environments.yml line 12, field accounts.main.id", a command, a URL.
        fix: the command or edit that fixes it ("git pull --ff-only").
        code: the process exit code (default :data:`EXIT_FAILED`).

    ``str(error)`` is the paragraph (:attr:`message`); :meth:`report` adds the id and its section. Callers never
    put a secret in the texts. Raises TypeError without an id (a defect).
    """

    default_id: str | None = None

    def __init__(self, what: str, *, id: str | None = None, where: str | None = None, fix: str | None = None,
                 code: int = EXIT_FAILED):
        self.id = id or self.default_id
        if not self.id:
            raise TypeError(f"{type(self).__name__} needs an id (a section of {TROUBLESHOOTING})")
        self.what, self.where, self.fix, self.code = what.rstrip(), where, fix, code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The paragraph shown to the user: what, where, then the fix."""
        multiline = "\n" in self.what
        parts = [self.what if multiline or self.what.endswith((".", "?", "!", ":")) else self.what + "."]
        parts += [f"Where: {self.where}."] if self.where else []
        parts += [f"Fix: {self.fix}"] if self.fix else []
        return ("\n" if multiline else " ").join(parts)

    def report(self, prefix: str = "") -> str:
        """``ERROR [id]: `` + *prefix* + the paragraph, then the line naming the id's section (on a line of its own,
        so that the Fix line can be pasted as it is)."""
        return f"ERROR [{self.id}]: {prefix}{self.message}\nSee {TROUBLESHOOTING}#{self.id}"


class Interrupted(RunbookError):
    """Ctrl-C (or SIGTERM, SIGHUP); ``what`` says what state was left behind. Exit code :data:`EXIT_INTERRUPTED`."""

    default_id = "interrupted"

    def __init__(self, what: str, *, fix: str | None = None):
        super().__init__(what, fix=fix, code=EXIT_INTERRUPTED)


class Transient(RunbookError):
    """An outside service did not answer usefully for a reason that may pass (throttling, a 5xx, a dropped
    connection, a timeout): pollers such as the pipeline's gate back off and try again."""

    default_id = "aws-unreachable"
