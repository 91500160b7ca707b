"""Why a workflow failed: the output of its failed jobs read for an IAM race (``inv ci.diagnose``).

An IAM race: the deploy ran before the IAM for its commit was applied (TROUBLESHOOTING.md, "inv ci.diagnose
classes"). The remedy is :func:`runbook.pipeline.decide_rerun`'s, shared with ``inv ci.rerun`` and ``inv release``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from runbook import ci, console, records
from runbook.pipeline import IAM_JOBS

IAM_RACE = re.compile(  # a line of a failed step that shows an IAM race
    r"AccessDenied|not authorized to perform|cannot be assumed by Lambda|AssumeRole\w*.*(fail|denied|not authorized|"
    r"error)|(fail|unable|error)\w*.*assume\s*role|role defined for the function cannot be assumed|"
    r"IAM gate for \S+ timed out", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """A failed job: *kind* ``iam-race``, ``iam-race?`` (a deploy without output) or ``other``; its failed step, the
    line that decided (secrets masked) and a note."""

    job: str
    kind: str
    step: str = ""
    line: str = ""
    note: str = ""


def diagnose(client: ci.Client, jobs: Sequence[ci.Job], iam: Sequence[records.ScopeStatus] | None) -> list[Finding]:
    """What each failed build job says. A line of its failed steps' output that matches :data:`IAM_RACE` makes it
    ``iam-race`` (one request for the steps, one per output read, until such a line); so does the IAM gate or the
    deploy failing while an IAM scope of *iam* (statuses, or None) is pending, whatever the output says. Without
    output (:class:`runbook.ci.StepOutputUnavailable`) the gate is ``iam-race``, the deploy ``iam-race?``."""
    pending = "; ".join(f"{s.scope.label}: {s.text}" for s in iam or () if s.needed and s.state != records.UNKNOWN)
    findings = []
    for job in (j for j in jobs if j.failed and not j.approval):
        step, line, read = "", None, True
        try:
            for name, text in client.step_output(job):
                line, step = next((x for x in text.splitlines() if IAM_RACE.search(x)), None), step or name
                if line:
                    step = name
                    break
        except ci.StepOutputUnavailable:
            read = False
        gate, iam_job = job.name.startswith(IAM_JOBS[0]), job.name.startswith(IAM_JOBS)
        note = "no IAM error in the failed step's output" if read else "step output not available"
        if line or iam_job and pending:
            note = "" if line else ("" if read else f"{note}; ") + f"the IAM of this commit is not applied: {pending}"
            findings.append(Finding(job.name, "iam-race", step, console.scrub(line or ""), note))
        elif read or not iam_job:
            findings.append(Finding(job.name, "other", step, note=note))
        else:
            findings.append(Finding(job.name, "iam-race" if gate else "iam-race?", note=f"{note}; " + (
                "the IAM gate failed: the IAM was not applied in time" if gate else "a failed deploy is often an IAM "
                "race: check `inv iam.status`")))
    return findings
