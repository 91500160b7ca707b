"""The CircleCI pipeline: valid against the published schema, and every environment gated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from runbook import config as configuration

PIPELINE = Path(__file__).resolve().parents[1] / ".circleci" / "config.yml"


def test_pipeline_validates_against_the_published_schema():
    tool = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.circle-ci", str(PIPELINE)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _workflow_jobs() -> dict[str, dict]:
    pipeline = yaml.safe_load(PIPELINE.read_text())
    cfg = configuration.load()
    workflow = pipeline["workflows"][cfg.circleci.workflow]
    jobs = {}
    for entry in workflow["jobs"]:
        if isinstance(entry, str):
            jobs[entry] = {"job": entry}
        else:
            (job, params), = entry.items()
            jobs[params.get("name", job)] = {"job": job, **params}
    return jobs


def test_test_job_runs_on_every_branch():
    jobs = _workflow_jobs()
    assert "test" in jobs
    assert "filters" not in jobs["test"]


def test_every_environment_has_its_gated_deploy():
    jobs = _workflow_jobs()
    for env in configuration.load().environments.values():
        gate, deploy = jobs.get(f"iam-gate-{env.name}"), jobs.get(f"deploy-{env.name}")
        assert gate and deploy, f"environment {env.name} has no iam-gate/deploy pair in {PIPELINE}"
        assert gate["job"] == "iam-gate" and gate["env"] == env.name
        assert deploy["job"] == "deploy" and deploy["env"] == env.name
        assert gate["requires"] == ["test"]
        assert deploy["requires"] == [f"iam-gate-{env.name}"], "deploy must wait for the IAM gate"
        for job in (gate, deploy):
            assert job["filters"]["branches"]["only"] == env.branch
            assert job.get("context"), "secrets come from a CircleCI context"


def test_no_deploy_job_bypasses_a_gate():
    jobs = _workflow_jobs()
    deploys = [name for name, job in jobs.items() if job["job"] == "deploy"]
    assert deploys
    for name in deploys:
        assert all(req.startswith("iam-gate-") for req in jobs[name]["requires"])


def test_gate_and_deploy_get_their_aws_credentials_first():
    """The gate and deploy jobs run the credentials step (OIDC token to the web-identity variables,
    or the legacy key) for their environment before their own step, in a job that has a context:
    CircleCI issues CIRCLE_OIDC_TOKEN_V2 only to jobs with a context."""
    pipeline = yaml.safe_load(PIPELINE.read_text())
    command = pipeline["commands"]["aws-credentials"]
    (run,) = [step["run"] for step in command["steps"]]
    assert ".circleci/aws-credentials.sh << parameters.env >>" in run["command"]
    for name in ("iam-gate", "deploy"):
        steps = pipeline["jobs"][name]["steps"]
        names = [next(iter(s)) if isinstance(s, dict) else s for s in steps]
        assert names[:3] == ["install", "aws-credentials", "run"], f"job {name}: {names}"
        assert steps[1]["aws-credentials"] == {"env": "<< parameters.env >>"}
    for job in _workflow_jobs().values():
        if job["job"] in ("iam-gate", "deploy"):
            assert job.get("context"), "no context, no OIDC token"
    assert (PIPELINE.parent / "aws-credentials.sh").stat().st_mode & 0o111, "the step runs the script directly"


def test_test_job_runs_the_projects_ci_script_rather_than_repeating_its_steps():
    steps = yaml.safe_load(PIPELINE.read_text())["jobs"]["test"]["steps"]
    commands = [step["run"]["command"] for step in steps if isinstance(step, dict) and "run" in step]
    assert any("bash .ci/run" in command for command in commands), commands
    assert not any(word in command for command in commands for word in ("pytest", "ruff", "checkov")), commands


def test_a_pull_requests_branch_gets_the_iam_preview_as_the_read_only_role():
    pipeline = yaml.safe_load(PIPELINE.read_text())
    cfg = configuration.load()
    (preview,) = [job for job in _workflow_jobs().values() if job["job"] == "iam-preview"]
    assert sorted(preview["filters"]["branches"]["ignore"]) == sorted(e.branch for e in cfg.environments.values())
    assert preview.get("context") and "requires" not in preview  # beside the tests, not after them
    steps = pipeline["jobs"]["iam-preview"]["steps"]
    assert steps[1] == {"aws-credentials": {"env": "<< parameters.env >>", "role": "reader"}}
    assert "store_artifacts" in steps[-1]


def test_the_nightly_drift_check_runs_only_on_its_schedule_for_every_environment():
    pipeline = yaml.safe_load(PIPELINE.read_text())
    cfg = configuration.load()
    nightly = pipeline["workflows"]["iam-drift-nightly"]
    assert {"equal": ["iam-drift-nightly", "<< pipeline.schedule.name >>"]} in nightly["when"]["and"]
    jobs = {params["env"]: params for entry in nightly["jobs"] for job, params in entry.items() if job == "iam-drift"}
    assert set(jobs) == set(cfg.environments) and all(job.get("context") for job in jobs.values())
    deploys = pipeline["workflows"][cfg.circleci.workflow]["when"]
    assert deploys == {"not": {"equal": ["scheduled_pipeline", "<< pipeline.trigger_source >>"]}}
    assert {"aws-credentials": {"env": "<< parameters.env >>", "role": "reader"}} in pipeline["jobs"]["iam-drift"][
        "steps"]
