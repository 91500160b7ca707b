"""The CI decisions on plain values: rerun, approval, diagnosis, watching (with an in-memory adapter), settings."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import yaml

from runbook import config as configuration
from runbook import pipeline, records
from runbook.ci import Job, StepOutputUnavailable, Workflow
from runbook.errors import Interrupted, RunbookError
from runbook.pipeline import NOTHING, REFUSE, RERUN_FROM_FAILED, RERUN_FROM_START, WAIT, decide_rerun
from runbook.scopes import for_environment
from tests.project import base_config

URL = "https://app.circleci.com/pipelines/gh/acme/acme-api/7/workflows/w1"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "environments.yml"
    path.write_text(yaml.safe_dump(base_config(None)))
    return configuration.load(path)


@pytest.fixture(scope="module")
def stg(cfg):
    return cfg.environments["stg"]


def workflow(state: str = "failed") -> Workflow:
    return Workflow("w1", "build-test-deploy", state, "p1", 7)


def gated(deploy: str = "failed", test: str = "success") -> list[Job]:
    return [Job("test", test, job_number=1), Job("iam-gate-stg", "success", job_number=2),
            Job("deploy-stg", deploy, job_number=3)]


def iam_states(cfg, stg, account: str = records.CURRENT, environment: str = records.CURRENT, reason: str = ""):
    account_scope, env_scope = for_environment(cfg, stg)
    return [records.ScopeStatus(account_scope, account, "0" * 64, reason=reason),
            records.ScopeStatus(env_scope, environment, "0" * 64, reason=reason)]


def decide(stg, state="failed", jobs=None, iam=None, **flags):
    return decide_rerun(workflow(state), gated() if jobs is None else jobs, iam=iam, environment=stg, url=URL, **flags)


# -- the rerun decision ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "action", "needles"), [
    ("success", NOTHING, ("succeeded: there is nothing to rerun",)),
    ("running", WAIT, ("is still running", "inv ci.rerun --env stg --wait")),
    ("failing", WAIT, ("is failing", "--wait")),
    ("not_run", REFUSE, ("did not run",)),
    ("unauthorized", REFUSE, ("restricted context",)),
    ("error", REFUSE, ("status error", "only for a failed workflow", "inv ci.rerun --env stg --from-start")),
    ("canceled", REFUSE, ("was canceled", "only for a failed workflow", "--from-start")),
    ("queued", REFUSE, ("has status 'queued'",)),
    ("failed", RERUN_FROM_FAILED, ("inv ci.rerun --env stg",)),
])
def test_what_each_workflow_status_decides(stg, state, action, needles):
    decision = decide(stg, state)
    assert decision.action == action
    text = f"{decision.why} {decision.fix}" + (str(decision.error) if decision.error else "")
    for needle in needles:
        assert needle in text, text
    assert (decision.error is None) == (action in (NOTHING, RERUN_FROM_FAILED))  # nothing to do is not a failure
    if decision.error:
        assert decision.error.what.startswith("Not rerunning: workflow build-test-deploy of pipeline #7 ")
        assert decision.error.what.endswith("nothing was changed") and decision.error.where == URL


def test_on_hold_names_the_approval_job_and_exits_5(stg):
    decision = decide(stg, "on_hold", [Job("test", "success"), Job("hold", "on_hold", "approval")])
    assert decision.action == REFUSE and decision.error.id == "on-hold" and decision.error.code == 5
    assert "approval job hold" in decision.why and "inv ci.approve --env stg --job hold" in decision.fix


@pytest.mark.parametrize("state", ["failed", "error", "canceled"])
def test_from_start_reruns_a_failed_errored_or_canceled_workflow(stg, state):
    decision = decide(stg, state, [Job("test", "canceled")], from_start=True)
    assert decision.action == RERUN_FROM_START and decision.rerun and "--from-start" in decision.fix


def test_a_failure_outside_the_gate_and_the_deploy_is_named_and_rerun_only_with_force(stg):
    jobs = gated(deploy="blocked", test="failed")
    refused = decide(stg, jobs=jobs)
    assert refused.action == REFUSE and refused.error.id == "workflow-failed"
    assert "failed in test, which is not the IAM gate or the deploy" in refused.error.what
    assert "inv ci.diagnose --env stg" in refused.fix and "--force" in refused.fix
    assert decide(stg, jobs=jobs, from_start=True).action == REFUSE  # from the start it fails the same way
    assert decide(stg, jobs=jobs, force=True).action == RERUN_FROM_FAILED
    # a failure of the infrastructure is not the code's: a rerun can pass
    assert decide(stg, jobs=gated(deploy="blocked", test="infrastructure_fail")).action == RERUN_FROM_FAILED


def test_a_pending_iam_step_refuses_with_the_commands_that_apply_it(cfg, stg):
    refused = decide(stg, iam=iam_states(cfg, stg, environment=records.NEVER_APPLIED))
    assert refused.action == REFUSE and refused.error.id == "iam-pending"
    assert "environment stg: never applied" in refused.why and "a rerun would fail the same way" in refused.why
    assert "inv iam.env --name stg" in refused.fix and "`inv ci.rerun --env stg`" in refused.fix
    assert "inv iam.account" not in refused.fix  # the account is current
    assert decide(stg, iam=iam_states(cfg, stg, environment=records.PENDING), force=True).action == RERUN_FROM_FAILED
    assert decide(stg, iam=iam_states(cfg, stg)).action == RERUN_FROM_FAILED


def test_unreadable_records_refuse_saying_why_unless_forced(cfg, stg):
    iam = iam_states(cfg, stg, account=records.UNKNOWN, environment=records.UNKNOWN, reason="No AWS credentials")
    refused = decide(stg, iam=iam)
    assert refused.error.id == "iam-pending" and "cannot be told" in refused.why
    assert "No AWS credentials" in refused.why and "--force" in refused.fix
    assert decide(stg, iam=iam, force=True).rerun


def test_a_failed_test_is_named_before_a_pending_iam_step(cfg, stg):
    decision = decide(stg, jobs=gated(test="failed"), iam=iam_states(cfg, stg, environment=records.PENDING))
    assert decision.error.id == "workflow-failed"


# -- approval ----------------------------------------------------------------------------------------------------


def test_the_approval_job_that_waits_is_chosen(stg):
    jobs = [Job("build", "success"), Job("hold", "on_hold", "approval", approval_request_id="r1")]
    assert pipeline.approval_choice(workflow("on_hold"), jobs, stg).name == "hold"
    done = [Job("build", "success"), Job("hold", "success", "approval")]
    assert pipeline.approval_choice(workflow("running"), done, stg, "hold").status == "success"  # approved already


@pytest.mark.parametrize(("jobs", "name", "needles"), [
    ([Job("build", "success")], None, ("has no approval job",)),
    ([Job("a", "on_hold", "approval"), Job("b", "on_hold", "approval")], None,
     ("several approval jobs", "(a, b)", "inv ci.approve --env stg --job a")),
    ([Job("build", "success"), Job("hold", "on_hold", "approval")], "build", ("that is a build job", "--job hold")),
    ([Job("test", "failed"), Job("hold", "blocked", "approval")], None,
     ("approval job hold", "is blocked (it waits for the jobs before it), not on hold")),
    ([Job("a", "success", "approval"), Job("b", "canceled", "approval")], None, ("approval job b", "canceled")),
])
def test_an_approval_that_cannot_be_given_is_refused_changing_nothing(stg, jobs, name, needles):
    with pytest.raises(RunbookError) as caught:
        pipeline.approval_choice(workflow("on_hold"), jobs, stg, name, url=URL)
    assert caught.value.id == "approval-refused" and "nothing was changed" in caught.value.what
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


# -- diagnosis ---------------------------------------------------------------------------------------------------


class Adapter:
    """An in-memory CI adapter: a workflow whose status goes through *states*, its jobs, each job's step output."""

    def __init__(self, jobs=(), outputs=None, states=("failed",), unavailable=False):
        self._jobs, self.outputs, self.states, self.unavailable = list(jobs), outputs or {}, list(states), unavailable
        self.read = []

    def workflow(self, workflow_id):
        return workflow(self.states.pop(0) if len(self.states) > 1 else self.states[0])

    def jobs(self, workflow_id):
        return self._jobs

    def step_output(self, job):
        if self.unavailable:
            raise StepOutputUnavailable("Step output is not available for project circleci/x/y", fix="the app")
        for step, text in self.outputs.get(job.name, []):
            self.read.append((job.name, step))
            yield step, text


DENIED = ("User: arn:aws:iam::123456789012:user/deployer is not authorized to perform: iam:PassRole "
          "(key AKIAABCDEFGHIJKLMNOP)")


def test_a_line_that_shows_an_iam_race_decides_and_its_secrets_are_masked():
    adapter = Adapter(gated(), {"deploy-stg": [("Install", "ok"), ("Deploy", f"Deploying\n{DENIED}"),
                                               ("Cleanup", "never read")]})
    (finding,) = pipeline.diagnose(adapter, adapter.jobs("w1"), None)
    assert (finding.job, finding.kind, finding.step) == ("deploy-stg", "iam-race", "Deploy")
    assert "not authorized to perform" in finding.line and "AKIAABCDEFGHIJKLMNOP" not in finding.line
    assert adapter.read == [("deploy-stg", "Install"), ("deploy-stg", "Deploy")]  # stops at the first such line


def test_the_gate_or_the_deploy_failing_while_an_iam_record_is_pending_is_an_iam_race(cfg, stg):
    adapter = Adapter(gated(), {"deploy-stg": [("Deploy", "Error: something else went wrong")]})
    iam = iam_states(cfg, stg, environment=records.PENDING)
    (finding,) = pipeline.diagnose(adapter, adapter.jobs("w1"), iam)
    assert finding.kind == "iam-race" and "environment stg: change pending" in finding.note
    assert pipeline.diagnose(adapter, adapter.jobs("w1"), iam_states(cfg, stg))[0].kind == "other"


def test_another_failure_is_other_with_its_step():
    adapter = Adapter([Job("test", "failed", job_number=1)], {"test": [("Tests", "FAILED tests/test_app.py")]})
    (finding,) = pipeline.diagnose(adapter, adapter.jobs("w1"), None)
    assert (finding.kind, finding.step, finding.note) == ("other", "Tests", "no IAM error in the failed step's output")


def test_without_step_output_a_pending_iam_record_still_makes_the_gate_an_iam_race(cfg, stg):
    jobs = [Job("deploy-stg", "failed")]
    iam = iam_states(cfg, stg, environment=records.NEVER_APPLIED)
    (finding,) = pipeline.diagnose(Adapter(jobs, unavailable=True), jobs, iam)
    assert finding.kind == "iam-race"
    assert finding.note == "step output not available; the IAM of this commit is not applied: environment stg: " \
        "never applied"


def test_without_step_output_the_job_s_name_decides():
    jobs = [Job("iam-gate-stg", "failed"), Job("deploy-stg", "failed"), Job("test", "timedout"),
            Job("hold", "failed", "approval"), Job("lint", "success")]
    findings = pipeline.diagnose(Adapter(jobs, unavailable=True), jobs, None)
    assert [(f.job, f.kind) for f in findings] == [("iam-gate-stg", "iam-race"), ("deploy-stg", "iam-race?"),
                                                    ("test", "other")]
    assert all(f.note.startswith("step output not available") for f in findings)


# -- watching ----------------------------------------------------------------------------------------------------


def test_a_poll_below_the_floor_is_refused_naming_the_floor():
    with pytest.raises(RunbookError) as caught:
        pipeline.watch(Adapter(), "w1", poll_s=0.5, sleep=pytest.fail)
    assert caught.value.id == "flag-invalid" and "floor of 2 s" in caught.value.what


def test_a_watch_prints_a_line_per_change_and_stops_at_an_approval():
    jobs = [Job("build", "success"), Job("hold", "on_hold", "approval"), Job("deploy", "blocked")]
    out, slept = io.StringIO(), []
    result = pipeline.watch(Adapter(jobs, states=("running", "running", "on_hold")), "w1", poll_s=2,
                            sleep=slept.append, clock=lambda: float(len(slept)), stream=out)
    assert (result.status, result.waiting, slept) == ("on_hold", ["hold"], [2, 2])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "jobs 1/3 done" in lines[0] and "waiting for approval: hold" in lines[1]


def test_a_watch_gives_up_after_its_timeout_and_ctrl_c_stops_only_the_watch():
    now = [0.0]
    with pytest.raises(RunbookError, match="still running") as caught:
        pipeline.watch(Adapter(states=("running",)), "w1", poll_s=10, timeout_s=25, stream=io.StringIO(),
                       sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert caught.value.id == "watch-timeout"

    def interrupt(seconds):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="the workflow goes on"):
        pipeline.watch(Adapter(states=("running",)), "w1", sleep=interrupt, stream=io.StringIO())


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_watch_on_a_terminal_ends_its_status_line_however_it_stops():
    now = [0.0]
    for states, stop in ((("running",), "timeout"), (("running", "failed"), "end")):
        out = _Terminal()
        try:
            pipeline.watch(Adapter(states=states), "w1", poll_s=10, timeout_s=25, stream=out,
                           sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
        except RunbookError:
            assert stop == "timeout"
        # the error report (or what follows) starts on a line of its own, not after the status line
        assert out.getvalue().startswith("\r\033[K") and out.getvalue().endswith("\n"), (stop, out.getvalue())


def test_how_a_watch_ended_decides_the_error(stg):
    held = pipeline.WatchResult("on_hold", 3.0, (Job("hold", "on_hold", "approval"),))
    with pytest.raises(RunbookError) as caught:
        pipeline.check_watch(held, stg, URL)
    error = caught.value
    assert error.id == "on-hold" and error.code == 5 and "inv ci.approve --env stg --job hold" in error.fix
    with pytest.raises(RunbookError) as caught:
        pipeline.check_watch(replace(held, status="failed"), stg, URL)
    failed = caught.value
    assert failed.id == "workflow-failed" and "inv ci.diagnose --env stg" in failed.fix
    assert pipeline.check_watch(replace(held, status="success"), stg, URL) is None


# -- settings ----------------------------------------------------------------------------------------------------


def test_the_read_timeout_comes_from_runbook_http_timeout_s(cfg, monkeypatch):
    monkeypatch.setenv("CIRCLECI_TOKEN", "t")
    monkeypatch.setenv(pipeline.TIMEOUT_VAR, "90")
    assert pipeline.client_for(cfg).timeout == (5.0, 90.0)
    for value in ("5000", "0", "nan", "soon"):
        monkeypatch.setenv(pipeline.TIMEOUT_VAR, value)
        with pytest.raises(RunbookError, match="between 0 and 3600") as caught:
            pipeline.client_for(cfg)
        assert caught.value.id == "circleci-setting-invalid"
