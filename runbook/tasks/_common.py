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
        except Exception as exc:
            message = _external_failure(exc)
            if message is None:
                raise  # a defect of the tool itself: the traceback is what a bug report needs
            raise Exit(console.mask("ERROR: " + message), code=1) from None

    return wrapper


def _external_failure(exc: Exception) -> str | None:
    """A message for a failure of something outside the tool (AWS, the network, a file), else None.

    The library maps the failures it expects to RunbookError; this is the safety net for an
    AWS or HTTP answer that nothing expected, so that it still ends in one paragraph.
    """
    import sys

    botocore = sys.modules.get("botocore.exceptions")
    if botocore and isinstance(exc, (botocore.BotoCoreError, botocore.ClientError)):
        return (f"An AWS call failed in a way the runbook does not recognise ({type(exc).__name__}). Fix: check "
                "the network, endpoint_url in the configuration and your credentials, then run the command again")
    requests = sys.modules.get("requests")
    if requests and isinstance(exc, requests.RequestException):
        return (f"An HTTP call failed in a way the runbook does not recognise ({type(exc).__name__}). Fix: check "
                "the network and CIRCLECI_HOST, then run the command again")
    return None


#: The largest number any seconds flag takes: one day. Larger values overflow time.sleep and
#: datetime arithmetic (OverflowError) long before they could mean anything.
MAX_SECONDS = 86400.0


def seconds(value, flag: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS) -> float:
    """A number of seconds from a command-line flag (a string, or None for *default*).

    Flags that take seconds are declared as strings so that a typo is a clear error, not a
    traceback from the argument parser. Raises RunbookError naming the flag when *value* is not
    a number, or is below *minimum* or above *maximum* (default :data:`MAX_SECONDS`, one day).
    """
    if value is None or value == "":
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number != number or not minimum <= number <= maximum:
        raise RunbookError(
            f"{flag} takes a number of seconds from {minimum:g} to {maximum:g}, not {value!r}",
            fix=f"for example {flag} {default:g}",
        )
    return number
