"""CircleCI's edge cases, in process against the stand-in: paging, empty pipelines, 404 token vs slug,
answers of the wrong shape, retries that wait (and say so), and watchers that stop at an approval."""

from __future__ import annotations

import io
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from runbook import circleci, pipeline
from runbook import config as configuration
from runbook.circleci import MalformedAnswer
from runbook.errors import RunbookError
from tests.circleci_standin import DEFAULT_SLUG, CircleCIStandIn, fast_client, job
from tests.project import base_config

SLUG = DEFAULT_SLUG
WORKFLOW = "build-test-deploy"
HEAD = "c" * 40


@pytest.fixture
def ci():
    with CircleCIStandIn(page_size=2) as standin:
        yield standin


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "environments.yml"
    path.write_text(yaml.safe_dump(base_config(None)))
    return configuration.load(path)


def find(ci, cfg, head=HEAD, **kwargs):
    sleeps: list[float] = []
    said: list[str] = []
    target = pipeline.find_workflow(fast_client(ci), cfg, cfg.environments["stg"], head, sleep=sleeps.append,
                                    say=said.append, **kwargs)
    return target, sleeps, said


def recent(minutes: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(minutes=minutes)


# -- paging ------------------------------------------------------------------------------------


def test_heads_pipeline_beyond_the_second_page_is_found(ci, cfg):
    mine = ci.add_pipeline(SLUG, "staging", HEAD, workflows=[(WORKFLOW, "failed")], created_at=recent(50))
    for n in range(5):  # five newer pipelines of other commits: HEAD's is on page 3
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")], created_at=recent(40 - n))
    target, _, _ = find(ci, cfg, head_time=time.time() - 3600)
    assert target.pipeline["id"] == mine.id and target.matches_head
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 3


def test_paging_stops_at_pipelines_older_than_heads_commit(ci, cfg):
    for n in range(9):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")])  # a day old
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg, head_time=time.time())
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 1
    assert "git pull" not in str(caught.value)
    assert "looked at 1 pipeline(s)" in caught.value.what
    assert "git push origin staging" in caught.value.fix


def test_paging_says_where_it_stopped(ci, cfg):
    for n in range(2 * pipeline.PIPELINE_PAGES + 1):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")])
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg)
    assert ci.count("GET", "/api/v2/project/*/pipeline") == pipeline.PIPELINE_PAGES
    assert f"stopped after {pipeline.PIPELINE_PAGES} page(s), the limit" in caught.value.what


def test_head_older_than_the_newest_pipeline_is_not_told_to_git_pull(ci, cfg):
    newest = ci.add_pipeline(SLUG, "staging", "d" * 40, workflows=[(WORKFLOW, "failed")], created_at=recent(5))
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg, head_time=time.time() - 1800)  # committed before the newest pipeline started
    text = str(caught.value)
    assert "git pull" not in text
    assert "older than the newest pipeline" in text and f"#{newest.number}" in text
    assert "--latest" in caught.value.fix


def test_a_404_on_a_page_token_is_a_paging_failure(ci):
    for n in range(3):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}")
    ci.fault("/api/v2/project/*/pipeline", 404, query="page-token")
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci).pipelines(SLUG, "staging"))
    text = str(caught.value)
    assert "paging failure" in text and "page 2" in text
    assert "not found" not in text.lower() and "circleci.project_slug" not in text


# -- a pipeline whose workflows are not listed yet ------------------------------------------------


def test_workflows_not_listed_yet_are_waited_for_briefly(ci, cfg):
    mine = ci.add_pipeline(SLUG, "staging", HEAD, workflows=[(WORKFLOW, "failed")])
    ci.fault("/api/v2/pipeline/*/workflow", body={"items": [], "next_page_token": None}, count=2)
    target, sleeps, said = find(ci, cfg)
    assert target.workflow["id"] == mine.workflows[0].id
    assert sleeps == list(pipeline.WORKFLOWS_WAIT_S[:2])
    assert "lists no workflows yet" in said[0]


def test_no_workflows_yet_is_not_a_wrong_workflow_name(ci, cfg):
    ci.add_pipeline(SLUG, "staging", HEAD)
    with pytest.raises(pipeline.NoWorkflowsYet) as caught:
        find(ci, cfg)
    assert "has no workflows yet" in caught.value.what
    assert "circleci.workflow" not in str(caught.value)
    assert ci.count("GET", "/api/v2/pipeline/*/workflow") == 1 + len(pipeline.WORKFLOWS_WAIT_S)


def test_no_workflow_named_x_lists_the_names_the_pipeline_has(ci, cfg):
    ci.add_pipeline(SLUG, "staging", HEAD, workflows=[("lint", "success"), ("nightly", "success")])
    with pytest.raises(RunbookError) as caught:
        find(ci, cfg)
    assert f"no workflow named {WORKFLOW!r}" in caught.value.what
    assert "'lint', 'nightly'" in caught.value.what
    assert "circleci.workflow" in caught.value.where
    assert ci.count("GET", "/api/v2/pipeline/*/workflow") == 1  # no waiting when workflows are listed


# -- 404: token or slug ------------------------------------------------------------------------


def test_404_with_a_project_token_says_v2_needs_a_personal_token():
    with CircleCIStandIn(project_tokens={"project-token-1234"}) as ci:
        client = fast_client(ci, env={"CIRCLECI_TOKEN": "project-token-1234", "CIRCLECI_HOST": ci.url})
        with pytest.raises(RunbookError) as caught:
            list(client.pipelines(SLUG))
    text = str(caught.value)
    assert "not a personal API token" in text and "project API token gets 404" in text
    assert "Personal API Tokens" in caught.value.fix
    assert "project-token-1234" not in text
    assert [r.path for r in ci.requests] == [f"/api/v2/project/{SLUG}/pipeline", "/api/v2/me"]


def test_404_with_a_personal_token_is_the_slug(ci):
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci).pipelines("gh/acme/typo"))
    text = str(caught.value)
    assert "gh/acme/typo" in text and "valid personal token" in text and "acme-dev" in text
    assert "circleci/<org-id>/<project-id>" in caught.value.fix and "circleci.project_slug" in text


# -- answers of the wrong shape ----------------------------------------------------------------

SHAPES = [
    ("/api/v2/project/*/pipeline", {"items": ["a", 1]}, "items[0] is a string, not an object"),
    ("/api/v2/project/*/pipeline", {"items": [{"id": "p", "number": 1, "vcs": "x"}]}, "items[0].vcs is a string"),
    ("/api/v2/pipeline/*/workflow", {"items": [{"name": WORKFLOW, "status": "failed"}]}, "items[0].id is missing"),
    ("/api/v2/workflow/*/job", {"items": [{"name": None, "status": "failed"}]}, "items[0].name is null"),
]


@pytest.mark.parametrize(("pattern", "body", "problem"), SHAPES)
def test_answers_of_the_wrong_shape_name_the_endpoint_and_the_field(ci, pattern, body, problem):
    p = ci.add_pipeline(SLUG, "staging", HEAD, workflows=[(WORKFLOW, "failed")])
    ci.fault(pattern, body=body)
    client = fast_client(ci)
    with pytest.raises(MalformedAnswer) as caught:
        list(client.pipelines(SLUG))
        client.workflows(p.id)
        client.jobs(p.workflows[0].id)
    assert problem in caught.value.what
    assert pattern.split("*")[0] in caught.value.what and "wrong shape" in caught.value.what


def test_v1_steps_of_the_wrong_shape(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("/api/v1.1/*", body={"steps": ["x"]})
    with pytest.raises(MalformedAnswer, match=r"steps\[0\] is a string, not an object") as caught:
        fast_client(ci).v1_job_steps(SLUG, wf.job("test").job_number)
    assert "/api/v1.1/project/github/acme/acme-api/" in caught.value.what


def test_one_workflow_of_the_wrong_shape(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), "w", "failed")
    ci.fault("/api/v2/workflow/*", body={"id": wf.id, "name": "w", "status": 3})
    with pytest.raises(MalformedAnswer, match="the workflow.status is a number, not a string"):
        fast_client(ci).workflow(wf.id)


# -- retries -----------------------------------------------------------------------------------


def test_a_5xx_is_never_retried_at_once_and_the_wait_is_announced(ci):
    ci.fault("*", 503, count=1)
    notes: list[str] = []
    client = fast_client(ci, backoff_factor=0.2, notify=notes.append)
    started = time.monotonic()
    assert list(client.pipelines(SLUG)) == []
    assert time.monotonic() - started >= 0.2
    assert len(notes) == 1 and "answered 503" in notes[0] and "retrying in 0." in notes[0]
    assert ci.request_count == 2


def test_backoff_is_jittered_and_never_zero():
    waits = [circleci.backoff_seconds(1, 0.5, 60) for _ in range(50)]
    assert all(0.5 <= w <= 1.0 for w in waits) and len(set(waits)) > 1
    assert circleci.backoff_seconds(10, 0.5, 60) == 60


# -- watching ----------------------------------------------------------------------------------


def test_watch_stops_at_an_approval_and_names_the_job(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), WORKFLOW, "on_hold")
    out = io.StringIO()
    result = pipeline.watch(fast_client(ci), wf.id, sleep=pytest.fail, stream=out)
    assert result.status == "on_hold" and result.waiting == ["hold"]
    assert "waiting for approval: hold" in out.getvalue()


def test_watch_polls_no_faster_than_the_floor(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), WORKFLOW, "running")
    sleeps: list[float] = []

    def sleep(seconds):
        sleeps.append(seconds)
        ci.finish_workflow(wf.id, "success")

    pipeline.watch(fast_client(ci), wf.id, poll_s=0.05, sleep=sleep, stream=io.StringIO())
    assert sleeps == [pipeline.MIN_POLL_S]
    said: list[str] = []
    assert pipeline.poll_interval(0.05, say=said.append) == pipeline.MIN_POLL_S and "floor" in said[0]


def test_approval_choice_needs_a_name_when_several_wait(ci, cfg):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "staging", HEAD), WORKFLOW, "on_hold", jobs=[
        job("build"), job("hold-a", "on_hold", requires=["build"], type="approval"),
        job("hold-b", "on_hold", requires=["build"], type="approval")])
    target, _, _ = find(ci, cfg)
    jobs = fast_client(ci).jobs(wf.id)
    with pytest.raises(RunbookError, match="several approval jobs") as caught:
        pipeline.approval_choice(target, cfg.environments["stg"], jobs)
    assert "--job hold-a" in caught.value.fix
    assert pipeline.approval_choice(target, cfg.environments["stg"], jobs, "hold-b").status == "on_hold"
