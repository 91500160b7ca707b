"""Console output: colour, headings, prompts, and masking of secrets.

Everything the runbook prints goes through :func:`say` and friends, so that in
one place secrets are masked (:func:`mask`) and text from outside (records,
API answers, logs) cannot drive the terminal (:func:`safe`). Colour comes from
colorama and is dropped when the output is not a terminal or ``NO_COLOR`` is set
(https://no-color.org).
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
MIN_SECRET_LEN = 8
"""Shorter values of secret-named variables are not masked in text. No credential that AWS or
CircleCI issues is that short (an AWS secret access key has 40 characters,
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_access-keys.html; a session token
hundreds), while the placeholder values used with a local AWS (``test``, ``testing``) are ordinary
words that would otherwise vanish from environment, branch and workflow names."""


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
    values = {v for k, v in env.items()
              if (k in SECRET_ENV_VARS or _SECRET_NAME.search(k)) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def mask(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every known secret value in *text* with ``****``.

    Secrets are the values of :data:`SECRET_ENV_VARS` and of any variable whose
    name contains SECRET, TOKEN, PASSWORD or PRIVATE_KEY (at least :data:`MIN_SECRET_LEN`
    characters long), plus *extra* values, plus the user-info of every URL
    (``https://x-access-token:TOKEN@github.com/...`` becomes ``https://****@github.com/...``).
    """
    for value in [*secret_values(), *extra]:
        if value:
            text = text.replace(value, MASK)
    return _URL_USERINFO.sub(rf"\1{MASK}@", text)


# The user-info part of a URL (RFC 3986, section 3.2.1: ``scheme://user:password@host``) carries credentials
# (a Git token in a remote, a password in an endpoint): it is never shown, whatever the variable or field.
# https://www.rfc-editor.org/rfc/rfc3986#section-3.2.1
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]+@")


_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# "secret_access_key=...", "token: ...", "password=..." in someone else's output: keep the name, hide the value
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b([\w.-]*(?:secret|token|passw(?:or)?d|private[_-]?key|credential)[\w.-]*)(\s*[=:]\s*[\"']?)[^\s\"',;]+")
_AWS_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def scrub(line: str, *, limit: int = 300) -> str:
    """One line of someone else's output (a CI log) made safe to print.

    Terminal colour sequences are dropped and other control characters escaped (:func:`safe`);
    secrets are masked: this machine's (:func:`mask`), anything shaped like an AWS access key ID
    or a 40-character secret access key, and the value of any ``name=value`` whose name says
    secret, token, password, private key or credential. At most *limit* characters are kept.
    AWS key formats: https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_access-keys.html
    """
    line = safe(_ANSI.sub("", line)).strip()
    line = _ASSIGNED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", mask(line))
    line = _AWS_SECRET_VALUE.sub(MASK, _AWS_KEY_ID.sub(MASK, line))
    return line[:limit]


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of *env* with the values of secret-looking variables replaced by ``****``, and the user-info of
    any URL in the other values too (as :func:`mask` does)."""
    return {k: (MASK if (k in SECRET_ENV_VARS or _SECRET_NAME.search(k)) else _URL_USERINFO.sub(rf"\1{MASK}@", v))
            for k, v in env.items()}


def safe(text: str) -> str:
    """*text* with every character that could drive a terminal shown as an escape instead.

    Line feeds and tabs stay; every other non-printable character (ESC and the rest of the
    C0/C1 controls, DEL, Unicode format characters such as the bidirectional overrides) becomes
    ``\\xNN`` or ``\\uNNNN``, so a record or an API answer cannot recolour the screen, move the
    cursor, rewrite a line already shown or reorder what is read.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else _escape(ch) for ch in text)


def one_line(text: str) -> str:
    """*text* made :func:`safe` for a single line (a table cell, a field shown inside a sentence): line feeds
    and tabs are shown as ``\\n`` and ``\\t`` too (carriage returns are ``\\x0d`` already),
    so outside text cannot add lines of its own or shift columns."""
    return safe(text).replace("\n", "\\n").replace("\t", "\\t")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def write(stream, text: str) -> None:
    """Write *text* to *stream* as it is (no newline added), :func:`mask`-ed, and flush it.

    The stream is :func:`guard`-ed: when its reader has gone (``inv ... | head``: EPIPE, or a closed
    terminal: EIO) this writes nothing and the run goes on; it never raises. Escaping outside text is the
    caller's part (:func:`safe`, :func:`one_line`); ``"\\r\\033[K"`` for a live status line is allowed.
    """
    if stream is None:
        return
    out = guard(stream)
    out.write(mask(text))
    out.flush()


def guard(stream):
    """*stream* wrapped so that a failing write or flush (the reader went away) silences it instead of raising.

    Once a write fails, the stream's file descriptor is pointed at ``/dev/null`` (``os.dup2``), so that
    what is still buffered, later writes and the interpreter's flush at exit all succeed, quietly: the run
    carries on (and writes its record) without a traceback. Only that stream is silenced; the other one keeps
    its reader. Returns *stream* itself when it is guarded already (or None).
    """
    if stream is None or isinstance(stream, _Guarded):
        return stream
    return _Guarded(stream)


def guard_std_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` :func:`guard`-ed streams (idempotent), so that every print of the
    run, Invoke's own included, survives a reader that has gone."""
    sys.stdout = guard(sys.stdout)
    sys.stderr = guard(sys.stderr)


class _Guarded:
    """A text stream whose write or flush failing (OSError such as EPIPE or EIO; ValueError on a closed file)
    points its file descriptor at /dev/null, quietly. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            _silence(self._stream)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError):
            _silence(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence(stream) -> None:
    """Point *stream*'s file descriptor at /dev/null and drop what it still buffers (nobody reads it)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return  # not a file (a closed one, or an in-memory stream): its writes keep failing, quietly
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    try:
        stream.flush()  # what was buffered for the reader that left goes to /dev/null now
    except (OSError, ValueError):
        pass


def _emit(text: str, stream) -> None:
    write(stream, text + "\n")


def say(text: str = "", *, err: bool = False) -> None:
    """Print one line to stdout, or stderr with ``err=True``, made :func:`safe` and masked; flushed at once."""
    _emit(safe(text), sys.stderr if err else sys.stdout)


def heading(text: str) -> None:
    """Print a step heading in bold cyan."""
    _emit(_style(f"==> {safe(text)}", _fore("CYAN")), sys.stdout)


def ok(text: str) -> None:
    """Print a success line in green."""
    _emit(_style(f"  ok  {safe(text)}", _fore("GREEN")), sys.stdout)


def warn(text: str) -> None:
    """Print a warning line in yellow."""
    _emit(_style(f"  !!  {safe(text)}", _fore("YELLOW")), sys.stdout)


def bad(text: str) -> None:
    """Print a failure line in red."""
    _emit(_style(f"  xx  {safe(text)}", _fore("RED")), sys.stdout)


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
            id="no-terminal",
            fix="run it in a terminal, or add --yes if this is deliberate automation",
        )
    try:
        answer = input(mask(safe(f"{question} [y/N] ")))
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
