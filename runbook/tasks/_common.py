"""What every task shares: a clean exit for RunbookError and signals, and Invoke's core ``--dry`` flag.

Exit codes (docs/RUNBOOK.md, "Exit codes"): a RunbookError's own code (1 unless it says otherwise);
130 after SIGINT (Ctrl-C), 143 after SIGTERM (what CI runners and ``timeout`` send), 129 after
SIGHUP (the terminal went away): 128 + the signal's number, as shells report it.
"""

from __future__ import annotations

import functools
import inspect
import signal
import sys

from invoke import Exit

from runbook import console
from runbook.errors import RunbookError

# Tasks that change nothing (they only read AWS, CircleCI or files): Invoke's --dry runs them as they are.
# Any other task without a ``dry_run`` parameter is refused under --dry (see :func:`_dry`).
READ_ONLY_TASKS = frozenset({
    "runbook.tasks.iam_tasks.status", "runbook.tasks.ci_tasks.status", "runbook.tasks.ci_tasks.diagnose",
    "runbook.tasks.ci_tasks.gate", "runbook.tasks.config_tasks.check",
})
# SIGTERM and SIGHUP stop a task the way Ctrl-C does: Terraform is asked to stop once and waited for.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def user_errors(func):
    """Decorate a task so that RunbookError, Ctrl-C, SIGTERM and SIGHUP end it with a message and an exit
    code, no traceback; and so that Invoke's core ``--dry`` (``-R``, config ``run.dry``) never lets it
    change anything (see :func:`_dry`)."""
    accepts_dry_run = "dry_run" in inspect.signature(func).parameters
    qualified = f"{func.__module__}.{func.__name__}"

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        received: list[int] = []
        console.guard_std_streams()  # a reader that goes away (`| head`) silences output, never stops the run
        previous = _catch_stop_signals(received)
        try:
            if args and _dry(args[0]):
                if accepts_dry_run:
                    kwargs["dry_run"] = True
                elif qualified not in READ_ONLY_TASKS:
                    name = qualified.rsplit(".", 1)[-1].rstrip("_")
                    raise RunbookError(
                        f"Invoke's --dry (-R, or run.dry in Invoke's configuration) asks for a dry run, and this "
                        f"task ({name}) has none: nothing was done",
                        id="dry-not-supported",
                        fix="run it without --dry when you mean it (INVOKE_RUN_DRY must be unset too); the iam.* "
                        "tasks and release take --dry-run",
                    )
            return func(*args, **kwargs)
        except RunbookError as exc:
            code, said = _signal_exit(received, exc.code)
            raise _exit(console.mask(exc.report(said)), code) from None
        except KeyboardInterrupt:
            code, said = _signal_exit(received, 130)
            raise _exit(f"Interrupted ({said.rstrip(': ') or 'Ctrl-C'}).", code) from None
        except Exception as exc:
            error = _external_failure(exc)
            if error is None:
                raise  # a defect of the tool itself: the traceback is what a bug report needs
            raise _exit(console.mask(error.report()), 1) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


def _exit(message: str, code: int) -> Exit:
    """The Exit with *message* and *code*; Invoke prints the message on stderr, also when stderr is closed.

    A closed pipe (``inv ... | tee`` after Ctrl-C killed ``tee``) would otherwise turn Invoke's print
    into a traceback and exit code 1: the code must stay the documented one. The streams are guarded
    by :func:`runbook.console.guard_std_streams` (the one mechanism for every output of a run).
    """
    console.guard_std_streams()
    return Exit(message, code=code)


def _dry(context) -> bool:
    """Whether Invoke's configuration asks for a dry run: the core flag ``--dry``/``-R``, ``INVOKE_RUN_DRY``
    or ``run.dry`` in a configuration file all end in ``run.dry`` (https://docs.pyinvoke.org/en/stable/
    concepts/configuration.html, "Default configuration values")."""
    try:
        return bool(context.config.run.dry)
    except AttributeError:
        return False


def _catch_stop_signals(received: list[int]) -> dict:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does, and note each in *received*.

    A signal that is ignored (``nohup`` ignores SIGHUP) stays ignored. Returns the previous handlers,
    to restore. The library's Ctrl-C handling then applies unchanged:
    the Terraform runner forwards one SIGINT to Terraform and waits for it to release its state lock.
    Only the main thread can install handlers; elsewhere (a task called from a thread) nothing changes.
    """

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue  # ignored on purpose (`nohup inv ...`): stays ignored
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:
            break
    return previous


def _signal_exit(received: list[int], code: int) -> tuple[int, str]:
    """The exit code and a message prefix for an ending caused by a signal: 128 + its number."""
    if not received or code != 130:
        return code, ""
    signum = received[0]
    return 128 + signum, f"stopped by {signal.Signals(signum).name}: "


def _external_failure(exc: Exception) -> RunbookError | None:
    """The error for a failure of something outside the tool (AWS, the network), else None.

    The library maps the failures it expects to RunbookError; this is the safety net for an
    AWS or HTTP answer that nothing expected, so that it still ends in one paragraph.
    """
    botocore = sys.modules.get("botocore.exceptions")
    if botocore and isinstance(exc, (botocore.BotoCoreError, botocore.ClientError)):
        return RunbookError(f"An AWS call failed in a way the runbook does not recognise ({type(exc).__name__})",
                            id="unrecognised-failure", fix="check the network, endpoint_url in the configuration "
                            "and your credentials, then run the command again")
    requests = sys.modules.get("requests")
    if requests and isinstance(exc, requests.RequestException):
        return RunbookError(f"An HTTP call failed in a way the runbook does not recognise ({type(exc).__name__})",
                            id="unrecognised-failure",
                            fix="check the network and CIRCLECI_HOST, then run the command again")
    return None


#: The largest number any seconds flag takes: one day. Larger values overflow time.sleep and
#: datetime arithmetic (OverflowError) long before they could mean anything.
MAX_SECONDS = 86400.0


def required(value, flag: str, example: str) -> None:
    """Refuse a missing flag that a task cannot do without (RunbookError naming *flag*, e.g. ``--env stg``).

    Such flags are declared optional (default None) and checked here: a required positional argument
    would take the next word, even ``--help``, as its value.
    """
    if value is None or value == "":
        raise RunbookError(f"{flag} is required", id="flag-invalid", fix=f"add it, for example {flag} {example}")


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
            id="flag-invalid",
            fix=f"for example {flag} {default:g}",
        )
    return number
