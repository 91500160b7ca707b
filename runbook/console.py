"""Console output: colour, headings, prompts, and masking of secrets.

Everything the runbook prints goes through :func:`say` and friends so that
secrets are masked in one place. Colour comes from colorama and is dropped when
the output is not a terminal or ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping

from runbook.errors import RunbookError

SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "CIRCLECI_TOKEN",
    "CIRCLE_TOKEN",
    "CIRCLECI_CLI_TOKEN",
)
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PRIVATE_KEY)", re.IGNORECASE)
MASK = "****"


def _colour_on(stream) -> bool:
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def _style(text: str, code: str, stream=None) -> str:
    stream = stream or sys.stdout
    if not _colour_on(stream):
        return text
    from colorama import Style

    return f"{code}{text}{Style.RESET_ALL}"


def _fore(name: str) -> str:
    from colorama import Fore

    return getattr(Fore, name)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking variables in *env* (default: os.environ), longest first."""
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if (k in SECRET_ENV_VARS or _SECRET_NAME.search(k)) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def mask(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every known secret value in *text* with ``****``.

    Secrets are the values of :data:`SECRET_ENV_VARS` and of any variable whose
    name contains SECRET, TOKEN, PASSWORD or PRIVATE_KEY, plus *extra* values.
    """
    for value in [*secret_values(), *extra]:
        if value:
            text = text.replace(value, MASK)
    return text


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of *env* with the values of secret-looking variables replaced by ``****``."""
    return {k: (MASK if (k in SECRET_ENV_VARS or _SECRET_NAME.search(k)) else v) for k, v in env.items()}


def say(text: str = "", *, err: bool = False) -> None:
    """Print one line (masked) to stdout, or stderr with ``err=True``; flushed at once."""
    stream = sys.stderr if err else sys.stdout
    print(mask(text), file=stream, flush=True)


def heading(text: str) -> None:
    """Print a step heading in bold cyan."""
    say(_style(f"==> {text}", _fore("CYAN")))


def ok(text: str) -> None:
    """Print a success line in green."""
    say(_style(f"  ok  {text}", _fore("GREEN")))


def warn(text: str) -> None:
    """Print a warning line in yellow."""
    say(_style(f"  !!  {text}", _fore("YELLOW")))


def bad(text: str) -> None:
    """Print a failure line in red."""
    say(_style(f"  xx  {text}", _fore("RED")))


def confirm(question: str, *, assume_yes: bool = False) -> bool:
    """Ask a yes/no question on the terminal; only "y" or "yes" is a yes.

    Args:
        question: shown as ``question [y/N] ``.
        assume_yes: answer yes without asking (the ``--yes`` flag, for automation).

    Raises RunbookError when stdin is not a terminal and *assume_yes* is false:
    nobody is there to answer, so the caller must pass ``--yes`` deliberately.
    """
    if assume_yes:
        say(f"{question} [y/N] yes (--yes)")
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise RunbookError(
            f"Confirmation needed ({question}) but there is no terminal to ask",
            fix="run it in a terminal, or add --yes if this is deliberate automation",
        )
    try:
        answer = input(mask(f"{question} [y/N] "))
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
