"""``inv release``: the whole runbook in one plan, running only the steps that are needed.

Order: preflight (configuration, git, Terraform, AWS caller identity, CircleCI
token), the applied records (which decide the IAM steps), the shared account
scope (another branch's account IAM is replaced only with --take-over), backend,
the account step if its record does not match this commit, the environment step likewise,
then the pipeline of this commit (waiting at the gate: nothing to do; failed:
rerun from failed) and a watch to its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runbook import circleci, console, iam, pipeline
from runbook.errors import RunbookError
from runbook.plan import Decision, Plan, Step
from runbook.scopes import for_environment


@dataclass
class ReleaseRun(iam.IamRun):
    """An :class:`~runbook.iam.IamRun` for the environment scope, plus the CircleCI side.

    Args (beyond IamRun's):
        poll_s: seconds between polls while watching the workflow.
        pipeline_wait_s: how long to wait for the pipeline of this commit to appear (a merge
            starts it within seconds; this covers a slow webhook).
    """

    poll_s: float = pipeline.WATCH_POLL_S
    pipeline_wait_s: float = 120.0
    client: Any = None
    target: pipeline.Target | None = None
    watch_id: str | None = None
    urls: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return " ".join([f"inv release --env {self.environment.name}", *self.flags()])

    def scopes(self):
        return for_environment(self.config, self.environment)


class CircleCICheck(Step):
    title = "Preflight: CircleCI token"
    preflight = True

    def describe(self, ctx: ReleaseRun) -> list[str]:
        slug = ctx.config.circleci.project_slug if ctx.config.circleci else "?"
        return [f"project {slug}, token from {' / '.join(circleci.TOKEN_VARIABLES)} (sent only to the API host)"]

    def check(self, ctx: ReleaseRun) -> Decision:
        ctx.client = ctx.client or pipeline.client_for(ctx.config)
        # One real call (the branch's newest pipelines, one page) proves the token, the host and the project
        # slug before anything changes, rather than after the IAM is applied.
        next(iter(ctx.client.pipelines(ctx.environment.branch)), None)
        return Decision(True, f"token from {ctx.client.token_source} accepted by {ctx.client.host} for "
                              f"{ctx.config.circleci.project_slug}")



class RecordsCheck(Step):
    title = "Applied records: which IAM steps are needed"
    preflight = True

    def describe(self, ctx: ReleaseRun) -> list[str]:
        return [f"SSM GetParameter {s.parameter}: compare with this commit's fingerprint"
                for s in for_environment(ctx.config, ctx.environment)]

    def check(self, ctx: ReleaseRun) -> Decision:
        from runbook import status

        if ctx.dry_run:
            statuses = status.examine(for_environment(ctx.config, ctx.environment))
        else:
            statuses = status.examine(for_environment(ctx.config, ctx.environment),
                                      session_for=lambda account: ctx.aws_session())
        ctx.needed = {}
        parts = []
        unreadable = None
        for st in statuses:
            if st.state != status.UNKNOWN:
                ctx.remember_record(st.scope, st.record)
            if st.state == status.UNKNOWN:
                unreadable = unreadable or RunbookError(
                    f"Cannot read the applied record of {st.scope.label}: {st.reason}",
                    id="record-unreadable",
                    where=f"SSM parameter {st.scope.parameter}",
                    fix="use administrator credentials for the account (aws sso login, or AWS_PROFILE)")
                ctx.needed[st.scope.kind] = (True, f"decided at run time (record unreadable now: {st.reason})")
            elif st.needed:
                ctx.needed[st.scope.kind] = (True, f"{st.text}")
            else:
                rec = st.record or {}
                ctx.needed[st.scope.kind] = (False, f"record current: applied at {rec.get('commit', '?')[:12]} by "
                                                    f"{rec.get('applied_by', '?').rsplit('/', 1)[-1]}")
            parts.append(f"{st.scope.label}: {st.text}")
        if unreadable:
            raise unreadable  # in a dry run a finding; ctx.needed already tells the later steps
        return Decision(True, "; ".join(parts))



class PipelineStep(Step):
    title = "CircleCI: the pipeline of this commit"

    def describe(self, ctx: ReleaseRun) -> list[str]:
        return [f"GET pipelines of branch {ctx.environment.branch} (commit = HEAD), its workflow "
                f"{ctx.config.circleci.workflow if ctx.config.circleci else '?'}; POST rerun from failed if it failed"]

    def _find(self, ctx: ReleaseRun) -> pipeline.Target:
        from runbook import git

        head = ctx.head
        head_time = git.commit_time(head)
        deadline = time.monotonic() + (0 if ctx.dry_run else ctx.pipeline_wait_s)
        while True:
            try:
                return pipeline.find_workflow(ctx.client, ctx.config, ctx.environment, head, head_time=head_time)
            except pipeline.NoPipelineYet as exc:  # only this is worth waiting out; other errors stop at once
                if time.monotonic() + 10 > deadline:
                    if ctx.dry_run:
                        raise
                    raise RunbookError(
                        f"{exc.what} (waited {ctx.pipeline_wait_s:.0f} s)",
                        id="no-pipeline",
                        fix="check in the CircleCI app that the push of this commit started a pipeline (project "
                        "settings, webhooks); once it has, resume",
                    ) from None
                console.say(f"  no pipeline for {head[:12]} yet; looking again in 10 s")
                time.sleep(10)

    def check(self, ctx: ReleaseRun) -> Decision:
        if ctx.dry_run and (ctx.client is None or ctx.head is None):
            return Decision(True, "looked up at run time: waiting at the gate means nothing to do, failed means "
                                  "rerun from failed")
        ctx.target = self._find(ctx)
        ctx.urls = (ctx.target.url,)
        workflow = ctx.target.workflow
        decision = pipeline.decide_rerun(workflow, ctx.client.jobs(workflow.id), iam=None,
                                         environment=ctx.environment, url=ctx.target.url)
        number = workflow.pipeline_number
        if decision.rerun:
            return Decision(True, f"pipeline #{number} failed: rerun from failed now that the IAM is applied")
        if decision.action == pipeline.NOTHING:
            return Decision(False, f"pipeline #{number} already succeeded")
        if decision.action == pipeline.WAIT:
            ctx.watch_id = workflow.id
            return Decision(False, f"pipeline #{number} is {workflow.status}: the IAM gate opens by itself once the "
                                   "records match; nothing to rerun")
        raise decision.error

    def run(self, ctx: ReleaseRun) -> str:
        ctx.watch_id = ctx.client.rerun(ctx.target.workflow, known=ctx.target.known)
        url = ctx.client.web_url(ctx.target.workflow.pipeline_number, ctx.watch_id)
        ctx.urls = (*ctx.urls, url)
        return f"rerunning from failed: {url}"


class WatchStep(Step):
    title = "CircleCI: watch the workflow to the end"

    def check(self, ctx: ReleaseRun) -> Decision:
        if ctx.dry_run:
            return Decision(True, "until it succeeds or fails (Ctrl-C stops watching, not the workflow)")
        if ctx.watch_id is None:
            return Decision(False, "nothing running")
        return Decision(True, "until it succeeds or fails (Ctrl-C stops watching, not the workflow)")

    def run(self, ctx: ReleaseRun) -> str:
        result = pipeline.watch(ctx.client, ctx.watch_id, poll_s=ctx.poll_s)
        error = pipeline.watch_error(result, ctx.environment, ctx.urls[-1] if ctx.urls else None)
        if error:
            raise error
        return f"succeeded after {result.seconds:.0f} s of watching"


def build(ctx: ReleaseRun) -> Plan:
    """The release plan for ``ctx.environment`` (see the module docstring)."""
    account, environment = for_environment(ctx.config, ctx.environment)
    steps: list[Step] = [*iam.preflight_steps()[:4], CircleCICheck(), RecordsCheck(), iam.TakeOverCheck(account),
                         iam.BackendStep(),
                         *iam.scope_steps(account), *iam.scope_steps(environment), PipelineStep(), WatchStep()]
    return Plan(name=f"release of {ctx.environment.name}", steps=steps, resume=ctx.command,
                dry_note="Nothing is changed; Terraform is not called; the only AWS and CircleCI calls are "
                "read-only look-ups (the applied records, the pipeline).")
