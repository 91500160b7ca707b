"""Console output: colour, headings, prompts, and masking of secrets.

Everything the runbook prints goes through :func:`say` and friends: secrets are masked (:func:`mask`), outside text
cannot drive the terminal (:func:`safe`), a reader that has gone (``inv ... | head``) silences the output instead of
stopping the run (:func:`guard`). Colour (colorama) only on a terminal without ``NO_COLOR`` (https://no-color.org).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Mapping

from runbook.errors import RunbookError

MASK = "****"
# Variables whose values are secrets (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, CIRCLECI_TOKEN, ...); a webhook's URL
# is its own credential (RUNBOOK_GATE_WEBHOOK).
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PRIVATE_KEY|WEBHOOK)", re.IGNORECASE)
MIN_SECRET_LEN = 8
"""Shorter values of secret-named variables are not masked in text. No credential that AWS or CircleCI issues is
that short (an AWS secret access key has 40 characters,
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_access-keys.html), while the placeholder values
used with a local AWS (``test``, ``testing``) are ordinary words that would otherwise vanish from names."""
# The user-info part of a URL (``scheme://user:password@host``, RFC 3986 section 3.2.1,
# https://www.rfc-editor.org/rfc/rfc3986#section-3.2.1) carries credentials: it is never shown.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]+@")
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# "secret_access_key=...", "token: ...", "password=..." in someone else's output: keep the name, hide the value
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b([\w.-]*(?:secret|token|passw(?:or)?d|private[_-]?key|credential)[\w.-]*)(\s*[=:]\s*[\"']?)[^\s\"',;]+")
_AWS_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def mask(text: str, extra: Iterable[str] = ()) -> str:
    """*text* with every known secret replaced by ``****``: the values of the variables whose name contains
    SECRET, TOKEN, PASSWORD, PRIVATE_KEY or WEBHOOK (at least :data:`MIN_SECRET_LEN` characters long), *extra* values,
    and the user-info of every URL (``https://x-access-token:T@github.com/`` becomes ``https://****@github.com/``)."""
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LEN}
    for value in sorted(found | set(extra), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return _URL_USERINFO.sub(rf"\1{MASK}@", text)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of *env* with the values of secret-named variables replaced by ``****``, and the user-info of any URL
    in the other values too."""
    return {k: MASK if _SECRET_NAME.search(k) else _URL_USERINFO.sub(rf"\1{MASK}@", v) for k, v in env.items()}


def scrub(line: str, *, limit: int = 300) -> str:
    """One line of someone else's output (a CI log) made safe to print: terminal sequences dropped, control
    characters escaped (:func:`safe`), secrets masked: this machine's (:func:`mask`), anything shaped like an AWS
    access key ID or secret access key (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_access-keys
    .html), and the value of any ``name=value`` whose name says secret, token, password, private key or
    credential. At most *limit* characters are kept."""
    line = _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", mask(safe(_ANSI.sub("", line)).strip()))
    return _AWS_SECRET_VALUE.sub(MASK, _AWS_KEY_ID.sub(MASK, line))[:limit]


def safe(text: str) -> str:
    """*text* with every character that could drive a terminal shown as an escape instead: line feeds and tabs
    stay; every other non-printable character (ESC and the C0/C1 controls, DEL, Unicode format characters such as
    the bidirectional overrides) becomes ``\\xNN`` or ``\\uNNNN``, so a record or an API answer cannot recolour
    the screen, move the cursor, rewrite a line already shown or reorder what is read."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else
                   f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" for ch in text)


def one_line(text: str) -> str:
    """*text* made :func:`safe` for a single line (a table cell, a field inside a sentence): line feeds and tabs
    shown as ``\\n`` and ``\\t`` too, so outside text cannot add lines or shift columns."""
    return safe(text).replace("\n", "\\n").replace("\t", "\\t")


def write(stream, text: str) -> None:
    """Write *text* to *stream* as it is (no newline added), :func:`mask`-ed, and flush it; never raises (the
    stream is :func:`guard`-ed). Escaping outside text is the caller's part; ``"\\r\\033[K"`` is allowed."""
    if stream is not None:
        out = guard(stream)
        out.write(mask(text))
        out.flush()


def guard(stream):
    """*stream* wrapped so that a failing write or flush (the reader went away: EPIPE, EIO, a closed file) points
    its file descriptor at ``/dev/null`` (``os.dup2``) instead of raising: what is still buffered, later writes and
    the interpreter's flush at exit all succeed, quietly, and the run carries on (and writes its record). Only that
    stream is silenced. Returns *stream* itself when it is guarded already (or None)."""
    return stream if stream is None or isinstance(stream, _Guarded) else _Guarded(stream)


def guard_std_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` :func:`guard`-ed (idempotent): every print of the run, Invoke's own
    included, survives a reader that has gone. A stream that was closed when the run started (``2>&-``: Python
    then sets it to None) writes to ``/dev/null`` instead, on its own file descriptor, so that no file the run opens
    later takes that descriptor and receives its output."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 - the process's own stream
    sys.stdout, sys.stderr = guard(sys.stdout), guard(sys.stderr)


class _Guarded:
    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._silence()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._silence()

    def _silence(self) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            return  # not a file (a closed one, or an in-memory stream): its writes keep failing, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what was buffered for the reader that left goes to /dev/null now

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _emit(text: str, colour: str | None = None, stream=None) -> None:
    stream = stream or sys.stdout
    if colour and not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty():
        from colorama import Fore, Style

        text = f"{getattr(Fore, colour)}{text}{Style.RESET_ALL}"
    write(stream, text + "\n")


def say(text: str = "", *, err: bool = False) -> None:
    """Print one line to stdout, or stderr with ``err=True``, made :func:`safe` and masked; flushed at once."""
    _emit(safe(text), stream=sys.stderr if err else sys.stdout)


def heading(text: str) -> None:
    """Print a step heading (cyan)."""
    _emit(f"==> {safe(text)}", "CYAN")


def ok(text: str) -> None:
    """Print a success line (green)."""
    _emit(f"  ok  {safe(text)}", "GREEN")


def warn(text: str) -> None:
    """Print a warning line (yellow)."""
    _emit(f"  !!  {safe(text)}", "YELLOW")


def confirm(question: str, *, assume_yes: bool = False) -> bool:
    """Ask *question* (shown as ``question [y/N] ``) on the terminal; only "y" or "yes" is a yes. *assume_yes*
    (``--yes``, for automation) answers yes without asking. Raises RunbookError (``no-terminal``) when stdin is
    not a terminal and *assume_yes* is false: nobody is there to answer."""
    if assume_yes:
        say(f"{question} [y/N] yes (--yes)")
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise RunbookError(f"Confirmation needed ({question}) but there is no terminal to ask", id="no-terminal",
                           fix="run it in a terminal, or add --yes if this is deliberate automation")
    try:
        answer = input(mask(safe(f"{question} [y/N] ")))
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
