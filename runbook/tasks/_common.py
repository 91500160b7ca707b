"""What every task shares: turning RunbookError into a clean exit."""

from __future__ import annotations

import functools

from invoke import Exit

from runbook import console
from runbook.errors import RunbookError


def user_errors(func):
    """Decorate a task so that RunbookError and Ctrl-C end it with a message and an exit code, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RunbookError as exc:
            raise Exit(console.mask("ERROR: " + exc.message), code=exc.code) from None
        except KeyboardInterrupt:
            raise Exit("Interrupted (Ctrl-C).", code=130) from None

    return wrapper
