"""Steps and plans: the runbook as data.

A :class:`Step` says what it would do (:meth:`Step.describe`), whether it is
needed and why (:meth:`Step.check`), and does it (:meth:`Step.run`). A
:class:`Plan` is an ordered list of steps. The same plan serves the dry run
(print every step, its reason and exact command, collect every preflight
finding, touch nothing) and the real run (stop at the first failure and print
the command that resumes). This follows pyinvoke's release tasks: examine,
show, confirm, act.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from runbook import console
from runbook.errors import Interrupted, RunbookError


@dataclass
class Decision:
    """Whether a step must run, and why (one line a person can read)."""

    needed: bool
    reason: str


class Step:
    """One runbook step. Subclasses set ``title`` and implement the three methods.

    ``preflight = True`` marks a check that must pass before anything changes;
    in a dry run its failures are collected as findings instead of stopping. A
    preflight step's :meth:`check` is its whole work: a real run never calls its
    :meth:`run`, so each look-up happens once.
    """

    title = "step"
    preflight = False

    def describe(self, ctx: Any) -> list[str]:
        """The exact commands or API calls the step makes, one per line (secrets masked)."""
        return []

    def check(self, ctx: Any) -> Decision:
        """Examine the world (dry run: without AWS or Terraform) and decide. May raise RunbookError."""
        return Decision(True, "always")

    def run(self, ctx: Any) -> str | None:
        """Do it. Returns a one-line result or None. Raises RunbookError on failure."""
        return None


@dataclass
class Outcome:
    """What happened to one step in a real run: "done", "skipped" or "failed", and how long it took."""

    title: str
    status: str
    seconds: float
    detail: str = ""


@dataclass
class Plan:
    """An ordered list of steps plus the command that runs (or resumes) it.

    Args:
        name: words for headings, e.g. "IAM for environment stg".
        steps: the steps, in order.
        resume: the command a person runs to start again after a failure.
        dry_note: what a dry run does and does not touch, shown in its heading.
    """

    name: str
    steps: list[Step]
    resume: str
    dry_note: str = "Nothing is changed; AWS and Terraform are not called."
    outcomes: list[Outcome] = field(default_factory=list)

    def dry_run(self, ctx: Any) -> list[RunbookError]:
        """Print every step, why, and its exact commands; return the findings that would stop a real run.

        Calls nothing that changes the world. Preflight failures and
        "cannot tell offline" notes become findings; other steps print their
        decision as far as it can be made without AWS or Terraform.
        """
        console.heading(f"Dry run: {self.name} ({len(self.steps)} steps). {self.dry_note}")
        findings: list[RunbookError] = []
        for number, step in enumerate(self.steps, 1):
            try:
                decision = step.check(ctx)
                mark = "run " if decision.needed else "skip"
                console.say(f"[{number}] {mark} {step.title}: {decision.reason}")
            except RunbookError as exc:
                findings.append(exc)
                console.say(f"[{number}] STOP {step.title}")
                console.bad(f"[{exc.id}] {exc.message}")
            for line in step.describe(ctx):
                console.say(f"      {line}")
        console.say()
        if findings:
            console.warn(f"{len(findings)} finding(s) would stop a real run; fix them first:")
            for exc in findings:
                console.say(f"   - [{exc.id}] {exc.message}")
        else:
            console.ok("No preflight finding would stop a real run (AWS identity is checked at run time).")
        console.say(f"To run it for real: {self.resume}")
        return findings

    def run(self, ctx: Any) -> list[Outcome]:
        """Run the steps in order; stop at the first failure.

        Returns the outcomes. Raises RunbookError (with the resume command added
        to its fix) or Interrupted; steps before the failure keep their effects,
        steps after it are not started.
        """
        total = len(self.steps)
        for number, step in enumerate(self.steps, 1):
            started = time.monotonic()
            console.heading(f"[{number}/{total}] {step.title}")
            try:
                decision = step.check(ctx)
                if not decision.needed:
                    console.ok(f"skipped: {decision.reason}")
                    self.outcomes.append(Outcome(step.title, "skipped", time.monotonic() - started, decision.reason))
                    continue
                if step.preflight:
                    detail = decision.reason  # the check was the step: look nothing up twice
                else:
                    console.say(f"  why: {decision.reason}")
                    detail = step.run(ctx) or decision.reason
            except RunbookError as exc:
                self.outcomes.append(Outcome(step.title, "failed", time.monotonic() - started, exc.what))
                exc.fix = _with_resume(exc.fix, self.resume, interrupted=isinstance(exc, Interrupted))
                raise
            except KeyboardInterrupt:
                self.outcomes.append(Outcome(step.title, "failed", time.monotonic() - started, "interrupted"))
                raise Interrupted(
                    f"Interrupted at step {number}/{total} ({step.title}); the steps before it are complete "
                    "and nothing after it started",
                    fix=self.resume,
                ) from None
            console.ok(detail)
            self.outcomes.append(Outcome(step.title, "done", time.monotonic() - started, detail))
        return self.outcomes

    def summary(self) -> None:
        """Print one line per step that ran: done or skipped, and its duration in seconds."""
        for outcome in self.outcomes:
            console.say(f"  {outcome.status:<8} {outcome.seconds:6.1f} s  {outcome.title}")


_AGAIN = re.compile(r"\brun (?:(?:the same |the )?command |it )?again\b", re.IGNORECASE)


def _with_resume(fix: str | None, resume: str, *, interrupted: bool) -> str:
    """*fix* with the resume command in it once: a fix that says "run the command again" gets the
    exact command in place of those words; any other fix gets it appended."""
    then = f"then resume with `{resume}`" if not interrupted else f"resume with `{resume}`"
    if not fix:
        return then[0].upper() + then[1:]
    if resume in fix:
        return fix
    named, count = _AGAIN.subn(f"resume with `{resume}`", fix, count=1)
    if count:
        return "R" + named[1:] if named.startswith("resume with") else named  # never capitalise a command
    return f"{fix}; {then}"
