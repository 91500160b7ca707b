"""What every task shares: a clean exit for RunbookError, signals and defects, Invoke's core ``--dry`` flag, flags.

Exit codes are listed once, in :mod:`runbook.errors` (README.md, "Exit codes", explains them): a
RunbookError's own code (1 unless it says otherwise); 128 + the signal's number after SIGINT (130), SIGTERM
(143) or SIGHUP (129); 70 for a defect of the runbook itself.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import traceback

import invoke
from invoke import Exit
from invoke.parser import Argument

from runbook import console
from runbook.errors import EXIT_BUG, EXIT_INTERRUPTED, Interrupted, RunbookError

# Tasks that change nothing (they only read AWS, CircleCI or files): Invoke's --dry runs them as they are.
# Any other task without a ``dry_run`` parameter is refused under --dry.
READ_ONLY_TASKS = frozenset({"status", "diagnose", "gate", "check", "plan", "drift"})
# SIGTERM and SIGHUP stop a task the way Ctrl-C does: Terraform is asked to stop once and waited for.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
#: The largest number any seconds flag takes: one day (larger values overflow time.sleep and datetime arithmetic).
MAX_SECONDS = 86400.0
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class _Number(Argument):
    """A seconds or minutes flag: kept as written (its task checks it with :func:`seconds`, naming the flag and its
    bounds; Invoke's own cast would end a bad value with a traceback), shown as a number in ``--help`` and as an
    ``<Argument: ...>`` in Invoke's own messages ("needed value and was not given one")."""

    def set_value(self, value, cast: bool = True) -> None:
        super().set_value(value, cast=False)

    def __repr__(self) -> str:
        return super().__repr__().replace(type(self).__name__, "Argument", 1)


class NumberFlags(invoke.Task):
    """Invoke's Task whose flags named ``*_s`` (seconds) or ``*_min`` (minutes) are :class:`_Number` s: ``--help``
    shows ``--poll-s=INT`` (the only numeric form Invoke's help knows; decimals are taken too), not ``STRING``."""

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.name.endswith(("_s", "_min")):
                argument.__class__, argument.kind = _Number, int
        return arguments


def task(**options):
    """``invoke.task`` making a :class:`NumberFlags` task (*options* as Invoke's: ``help``, ``name``, ...)."""
    return invoke.task(klass=NumberFlags, **options)


def debugging() -> bool:
    """Whether a defect's traceback is wanted: Invoke's core ``--debug`` (``-d``) or ``RUNBOOK_DEBUG=1``."""
    return os.environ.get("RUNBOOK_DEBUG", "") not in ("", "0") or logging.getLogger("invoke").isEnabledFor(
        logging.DEBUG)


def user_errors(func):
    """Decorate a task so that RunbookError, Ctrl-C, SIGTERM and SIGHUP end it with a message and an exit code,
    never a traceback; a defect of the runbook ends with its own code (:data:`EXIT_BUG`) and how to report it
    (the traceback with ``--debug``); and Invoke's core ``--dry`` (``-R``, config ``run.dry``) never lets a task
    change anything."""
    accepts_dry_run = "dry_run" in inspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        received: list[int] = []
        console.guard_std_streams()  # a reader that goes away (`| head`) silences output (the Exit's message too)
        previous = _catch_stop_signals(received)
        try:
            if args and _dry(args[0]):
                if accepts_dry_run:
                    kwargs["dry_run"] = True
                elif func.__name__.rstrip("_") not in READ_ONLY_TASKS:
                    raise RunbookError(
                        f"Invoke's --dry (-R, or run.dry in Invoke's configuration) asks for a dry run, and this task "
                        f"({func.__name__.rstrip('_')}) has none: nothing was done", id="dry-not-supported",
                        fix="run it without --dry when you mean it (INVOKE_RUN_DRY must be unset too); iam.account, "
                            "iam.env, iam.bootstrap, iam.unlock and release take --dry-run")
            return func(*args, **kwargs)
        except RunbookError as exc:
            code, said = _signal_exit(received, exc.code)
            if debugging():
                traceback.print_exc()
            raise Exit(console.safe(console.mask(exc.report(said))), code) from None  # outside text in it too
        except Exit:  # a task's own exit code (inv iam.plan: 2, changes)
            raise
        except KeyboardInterrupt:
            code, said = _signal_exit(received, EXIT_INTERRUPTED)
            raise Exit(Interrupted(f"Interrupted ({said.rstrip(': ') or 'Ctrl-C'})").report(), code) from None
        except Exception as exc:  # noqa: BLE001 - a defect of the runbook: say so, never a bare traceback
            if debugging():
                traceback.print_exc()
            raise Exit(console.safe(console.mask(_defect(exc))), EXIT_BUG) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


def _defect(exc: Exception) -> str:
    """The message for an exception no part of the runbook expected: an AWS or HTTP failure that nothing named is
    still named with its code and message; anything else is a defect, to be reported with its traceback."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore and isinstance(exc, (botocore.BotoCoreError, botocore.ClientError)):
        from runbook import aws

        return aws.failure(exc, "an AWS call", "AWS").report()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {os.path.basename(where.filename)} line {where.lineno}" if where else ""
    return RunbookError(f"The runbook failed with {type(exc).__name__}{at}: {str(exc)[:300]}. This is a defect of the "
                        "runbook, not something you did", id="defect", code=EXIT_BUG,
                        fix="run the same command again with RUNBOOK_DEBUG=1 (or `inv --debug ...`) and file an issue "
                            "in this repository with the traceback it prints (check it for secrets first)").report()


def _dry(context) -> bool:
    """Whether Invoke's configuration asks for a dry run: ``--dry``/``-R``, ``INVOKE_RUN_DRY`` or ``run.dry`` all end
    in ``run.dry`` (https://docs.pyinvoke.org/en/stable/concepts/configuration.html)."""
    return bool(getattr(getattr(context.config, "run", None), "dry", False))


def _catch_stop_signals(received: list[int]) -> dict:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does, and note each in *received*. A signal that
    is ignored (``nohup`` ignores SIGHUP) stays ignored. Returns the previous handlers, to restore. Only the main
    thread can install handlers; elsewhere nothing changes."""

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:
            break
    return previous


def _signal_exit(received: list[int], code: int) -> tuple[int, str]:
    """The exit code and a message prefix for an ending caused by a signal: 128 + its number."""
    if not received or code != EXIT_INTERRUPTED:
        return code, ""
    return 128 + received[0], f"stopped by {signal.Signals(received[0]).name}: "


def required(value, flag: str, example: str) -> None:
    """Refuse a missing flag that a task cannot do without (RunbookError naming *flag*, e.g. ``--env stg``). Such
    flags are declared optional and checked here: a required positional argument would take the next word,
    even ``--help``, as its value."""
    if value is None or value == "":
        raise RunbookError(f"{flag} is required", id="flag-invalid", fix=f"add it, for example {flag} {example}")


def seconds(value, flag: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_SECONDS,
            unit: str = "seconds") -> float:
    """A number of seconds (or of *unit*) from a command-line flag (a string, or None for *default*). Raises
    RunbookError naming the flag and its bounds when *value* is not a plain decimal number written in ASCII ("2.5",
    "1e3"; not "", " 5", "1_000", "٣" or "nan", all of which Python's float() would take), or is below *minimum* (a
    floor, named) or above *maximum* (default one day)."""
    if value is None:
        return float(default)
    number = float(value) if PLAIN_NUMBER.fullmatch(str(value)) else math.nan  # NaN is in no range: refused
    if not minimum <= number <= maximum:
        raise RunbookError(f"{flag} takes a number of {unit} from {minimum:g} to {maximum:g}, not {value!r}",
                           id="flag-invalid", fix=f"for example {flag} {default:g}")
    return number


def checkout():
    """The checkout here (a :class:`runbook.git.Checkout`: branch, HEAD, changes; one ``git status``). Raises
    RunbookError when this is not a git checkout (``not-a-git-checkout``) or its branch has no commit yet."""
    from runbook import git

    try:
        return git.inspect()
    except RunbookError as exc:
        if "no commit yet" not in exc.what:
            raise
        raise RunbookError("The branch checked out here has no commit yet (a new repository): there is no commit to "
                           "apply, release or find a pipeline for", id="no-commit-yet", where=os.getcwd(),
                           fix='commit the project, then run the command again: git add -A && git commit -m '
                               '"Initial commit"') from None


def target(name: str | None, flag: str = "--env"):
    """(configuration, checkout, environment) of a task that works on this commit: the environment *name* (from
    the task's *flag*), else the one whose branch is checked out. Raises RunbookError as :func:`checkout`,
    :func:`runbook.config.load` and :func:`runbook.scopes.environment_for` do."""
    from runbook import config
    from runbook.scopes import environment_for

    cfg, here = config.load(), checkout()
    return cfg, here, environment_for(cfg, name, here.branch, flag=flag)


def pick_environment(config, name: str | None, *, flag: str = "--env"):
    """The environment *name*, else the one whose branch is checked out (:func:`runbook.scopes.environment_for`):
    only then is the checkout read, so that a task given its environment needs none."""
    from runbook.scopes import environment_for

    return environment_for(config, name, None if name is not None else checkout().branch, flag=flag)


@contextlib.contextmanager
def for_a_person(json_wanted: bool):
    """With *json_wanted* (a task's ``--json``), send what the task prints for a person, Terraform's output
    included, to stderr while the block runs, so that stdout carries only the document :func:`print_json` prints
    after it; otherwise change nothing."""
    with contextlib.redirect_stdout(sys.stderr) if json_wanted else contextlib.nullcontext():
        yield


def print_json(document) -> None:
    """Print *document* on stdout as JSON (2-space indent, ASCII). Each string in it is masked on its own
    (:func:`runbook.console.mask`; masking the escaped text would miss a secret with non-ASCII characters) and is
    otherwise as recorded, except that a lone surrogate becomes "?" (other JSON parsers refuse it)."""

    def clean(value):
        if isinstance(value, str):
            return console.mask(value.encode("utf-8", "replace").decode("utf-8"))
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        return [clean(item) for item in value] if isinstance(value, (list, tuple)) else value

    console.say(json.dumps(clean(document), indent=2))


def given(**flags) -> list[str]:
    """The flags as the user gave them, to be typed again (a resume command): ``yes=True`` is ``--yes``,
    ``poll_s="3"`` is ``--poll-s 3`` (quoted for a shell); False and None are left out."""
    typed = [("--" + name.replace("_", "-"), value) for name, value in flags.items() if value not in (None, False)]
    return [flag if value is True else f"{flag} {shlex.quote(str(value))}" for flag, value in typed]


def dry_run_only(json_wanted: bool, dry_run: bool) -> None:
    """Refuse ``--json`` without ``--dry-run`` (``flag-invalid``): a real run's output is for a person."""
    if json_wanted and not dry_run:
        raise RunbookError("--json is for a dry run's findings (--dry-run --json); a real run prints for a person",
                           id="flag-invalid", fix="add --dry-run, or leave out --json")
