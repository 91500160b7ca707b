"""Runs the jobs of the CircleCI stand-in's workflows the way CircleCI's executors would.

The stand-in keeps the API's state; this runner plays the machines: whenever a job of a
workflow is ``running``, it executes that job's command in the project clone (the same
commands as .circleci/config.yml: ``inv ci.gate --env ENV`` for ``iam-gate-ENV``,
``inv ci.deploy --env ENV`` for ``deploy-ENV``; ``test`` passes at once, running the test
suite inside the test suite would be circular) and reports the result back with
``complete_job``. Everything runs on 127.0.0.1; ``stop()`` ends the loop.
"""

from __future__ import annotations

import threading
import time

from tests.circleci_standin import CircleCIStandIn
from tests.project import Project, Result


class PipelineRunner:
    """Execute running jobs of *ci*'s workflows in *project*.

    Args:
        gate_args: extra arguments for ``inv ci.gate`` (timeout and poll seconds for tests).
    """

    def __init__(self, ci: CircleCIStandIn, project: Project, gate_args: tuple[str, ...] = ()):
        self.ci = ci
        self.project = project
        self.gate_args = gate_args
        self.results: dict[tuple[str, str], Result] = {}
        self._started: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop = threading.Thread(target=self._run, name="pipeline-runner", daemon=True)

    def __enter__(self) -> PipelineRunner:
        self._loop.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._loop.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            for workflow in list(self.ci.workflows.values()):
                for job in list(workflow.jobs):
                    key = (workflow.id, job.name)
                    if job.status == "running" and key not in self._started:
                        self._started.add(key)
                        thread = threading.Thread(target=self._execute, args=(workflow.id, job.name), daemon=True)
                        self._threads.append(thread)
                        thread.start()
            time.sleep(0.05)

    def _execute(self, workflow_id: str, name: str) -> None:
        if name.startswith("iam-gate-"):
            result = self.project.inv("ci.gate", "--env", name.removeprefix("iam-gate-"), *self.gate_args)
        elif name.startswith("deploy-"):
            result = self.project.inv("ci.deploy", "--env", name.removeprefix("deploy-"))
        else:
            result = Result(0, "", "")
        self.results[(workflow_id, name)] = result
        self.ci.complete_job(workflow_id, name, "success" if result.code == 0 else "failed")

    def output(self, name: str) -> str:
        """All output of every run of job *name*, oldest first."""
        return "\n".join(r.all for (wid, n), r in self.results.items() if n == name)

    def wait_for(self, predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
        """Poll *predicate* every 0.05 s until true; fail the test after *timeout_s* seconds."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)
