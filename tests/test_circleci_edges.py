"""Finding the workflow of a commit against the CircleCI stand-in (in process): paging and its limits, pipelines
whose workflows are not listed yet, a 404 told apart (token or slug), an answer of the wrong shape, a watch."""

from __future__ import annotations

import io
import time
from datetime import datetime, timedelta, timezone

import pytest

from runbook import pipeline
from runbook.ci import Job
from runbook.circleci import MalformedAnswer
from runbook.errors import RunbookError
from tests import ci_fixtures
from tests.ci_fixtures import HEAD, SLUG, WORKFLOW
from tests.circleci_standin import CircleCIStandIn, fast_client

ci, cfg = ci_fixtures.ci, ci_fixtures.cfg


def find(ci, cfg, head=HEAD, **kwargs):
    sleeps: list[float] = []
    said: list[str] = []
    target = pipeline.find_workflow(fast_client(ci), cfg, cfg.environments["stg"], head, sleep=sleeps.append,
                                    say=said.append, **kwargs)
    return target, sleeps, said


def recent(minutes: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(minutes=minutes)


# -- paging ------------------------------------------------------------------------------------------------------


def test_heads_pipeline_beyond_the_second_page_is_found(ci, cfg):
    mine = ci.add_pipeline(SLUG, "staging", HEAD, workflows=[(WORKFLOW, "failed")], created_at=recent(50))
    for n in range(5):  # five newer pipelines of other commits: HEAD's is on page 3
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")], created_at=recent(40 - n))
    target, _, _ = find(ci, cfg, head_time=time.time() - 3600)
    assert target.pipeline.id == mine.id and target.matches_head
    assert target.workflow.id == mine.workflows[0].id and target.known == (mine.workflows[0].id,)
    assert target.url.endswith(f"/pipelines/{SLUG}/{mine.number}/workflows/{mine.workflows[0].id}")
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 3


def test_paging_stops_at_pipelines_older_than_heads_commit(ci, cfg):
    for n in range(9):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")])  # a day old
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg, head_time=time.time())
    assert ci.count("GET", "/api/v2/project/*/pipeline") == 1
    assert "looked at 1 pipeline(s)" in caught.value.what and "git push origin staging" in caught.value.fix
    assert "git pull" not in str(caught.value)


def test_paging_says_where_it_stopped(ci, cfg):
    for n in range(2 * pipeline.PIPELINE_PAGES + 1):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}", workflows=[(WORKFLOW, "success")])
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg)
    assert ci.count("GET", "/api/v2/project/*/pipeline") == pipeline.PIPELINE_PAGES
    assert f"stopped after {pipeline.PIPELINE_PAGES} page(s), the limit" in caught.value.what


def test_head_older_than_the_newest_pipeline_is_pointed_at_latest(ci, cfg):
    newest = ci.add_pipeline(SLUG, "staging", "d" * 40, workflows=[(WORKFLOW, "failed")], created_at=recent(5))
    with pytest.raises(pipeline.NoPipelineYet) as caught:
        find(ci, cfg, head_time=time.time() - 1800)  # committed before the newest pipeline started
    assert "older than the newest pipeline" in str(caught.value) and f"#{newest.number}" in str(caught.value)
    assert "--latest" in caught.value.fix and "git pull" not in str(caught.value)
    target, _, _ = find(ci, cfg, head_time=time.time() - 1800, latest=True)
    assert target.pipeline.id == newest.id and not target.matches_head


def test_a_404_on_a_page_token_is_a_paging_failure(ci):
    for n in range(3):
        ci.add_pipeline(SLUG, "staging", f"{n:040x}")
    ci.fault("/api/v2/project/*/pipeline", 404, query="page-token")
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci).pipelines("staging", max_pages=5))
    assert "paging failure" in str(caught.value) and "page 2" in str(caught.value)
    assert "not found" not in str(caught.value).lower() and "circleci.project_slug" not in str(caught.value)


# -- a pipeline whose workflows are not listed yet ---------------------------------------------------------------


def test_workflows_not_listed_yet_are_waited_for_briefly(ci, cfg):
    mine = ci.add_pipeline(SLUG, "staging", HEAD, workflows=[(WORKFLOW, "failed")])
    ci.fault("/api/v2/pipeline/*/workflow", body={"items": [], "next_page_token": None}, count=2)
    target, sleeps, said = find(ci, cfg)
    assert target.workflow.id == mine.workflows[0].id
    assert sleeps == list(pipeline.WORKFLOWS_WAIT_S[:2]) and "lists no workflows yet" in said[0]


def test_no_workflows_yet_is_not_a_wrong_workflow_name(ci, cfg):
    ci.add_pipeline(SLUG, "staging", HEAD)
    with pytest.raises(RunbookError) as caught:
        find(ci, cfg)
    assert caught.value.id == "workflow-not-found" and "has no workflows yet" in caught.value.what
    assert "circleci.workflow" not in str(caught.value)
    assert ci.count("GET", "/api/v2/pipeline/*/workflow") == 1 + len(pipeline.WORKFLOWS_WAIT_S)


def test_no_workflow_named_x_lists_the_names_the_pipeline_has(ci, cfg):
    ci.add_pipeline(SLUG, "staging", HEAD, workflows=[("lint", "success"), ("nightly", "success")])
    with pytest.raises(RunbookError) as caught:
        find(ci, cfg)
    assert f"no workflow named {WORKFLOW!r}" in caught.value.what and "'lint', 'nightly'" in caught.value.what
    assert "circleci.workflow" in caught.value.where
    assert ci.count("GET", "/api/v2/pipeline/*/workflow") == 1  # no waiting when workflows are listed


# -- 404: token or slug ------------------------------------------------------------------------------------------


def test_404_with_a_project_token_says_v2_needs_a_personal_token():
    with CircleCIStandIn(project_tokens={"project-token-1234"}) as ci:
        with pytest.raises(RunbookError) as caught:
            list(fast_client(ci, env={"CIRCLECI_TOKEN": "project-token-1234", "CIRCLECI_HOST": ci.url}).pipelines())
    assert "not a personal API token" in str(caught.value) and "project API token gets 404" in str(caught.value)
    assert "Personal API Tokens" in caught.value.fix and "project-token-1234" not in str(caught.value)
    assert [r.path for r in ci.requests] == [f"/api/v2/project/{SLUG}/pipeline", "/api/v2/me"]


def test_404_with_a_personal_token_is_the_slug(ci):
    with pytest.raises(RunbookError) as caught:
        list(fast_client(ci, "gh/acme/typo").pipelines())
    text = str(caught.value)
    assert "gh/acme/typo" in text and "valid personal token" in text and "acme-dev" in text
    assert "circleci/<org-id>/<project-id>" in caught.value.fix and "circleci.project_slug" in text
    assert "config/environments.yml" in text


# -- the shape of an answer, a watch ------------------------------------------------------------------------------


def test_an_answer_of_the_wrong_shape_names_the_endpoint_and_the_field(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), WORKFLOW, "failed")
    ci.fault("/api/v1.1/*", body={"steps": ["x"]})
    with pytest.raises(MalformedAnswer) as caught:
        list(fast_client(ci).step_output(Job("test", "failed", job_number=wf.job("test").job_number)))
    assert "/api/v1.1/project/github/acme/acme-api/" in caught.value.what and "$.steps[0]" in caught.value.what


def test_a_watch_stops_at_an_approval_and_names_the_job(ci):
    wf = ci.add_workflow(ci.add_pipeline(SLUG, "main"), WORKFLOW, "on_hold")
    out = io.StringIO()
    result = pipeline.watch(fast_client(ci), wf.id, sleep=pytest.fail, stream=out)
    assert result.status == "on_hold" and result.waiting == ["hold"]
    assert "waiting for approval: hold" in out.getvalue()
