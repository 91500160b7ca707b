"""`inv ci.comment`: the preview job keeps exactly one comment on its pull request up to date, against a local
stand-in of GitHub's issue comments API (tests/github_standin.py), and never fails the job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.github_standin import GitHubStandIn

TOKEN = "ghs_SENTINEL0123456789abcdefghij"
PULL = "https://github.com/acme/acme-api/pull/12"


def comment(repo_root: Path, tmp_path: Path, text: str, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "comment.md"
    path.write_text(text)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CIRCLE_"))}
    return subprocess.run([str(Path(sys.executable).parent / "inv"), "ci.comment", "--file", str(path)],
                          cwd=repo_root, env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture
def github():
    with GitHubStandIn(TOKEN) as standin:
        standin.comments[12] = [{"id": 1, "body": "LGTM"}, {"id": 2, "body": "one question"},
                                {"id": 3, "body": "thanks"}]  # two pages before the preview's
        yield standin


def test_the_preview_is_one_comment_created_then_updated_in_place(repo_root, tmp_path, github):
    env = {"GITHUB_TOKEN": TOKEN, "CIRCLE_PULL_REQUEST": PULL, "GITHUB_API_URL": github.url}
    first = comment(repo_root, tmp_path, "merged into staging (stg): inv iam.env --name stg", **env)
    second = comment(repo_root, tmp_path, "merged into staging (stg): nothing", **env)
    assert first.returncode == second.returncode == 0, first.stdout + first.stderr + second.stdout + second.stderr
    assert "Pull request #12: created comment 100." in first.stdout
    assert "Pull request #12: updated comment 100." in second.stdout
    previews = [c for c in github.comments[12] if "runbook:iam-preview" in c["body"]]
    assert len(previews) == 1 and previews[0]["body"].endswith("merged into staging (stg): nothing")
    assert [method for method, _ in github.requests].count("POST") == 1  # never commented twice
    assert TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr


@pytest.mark.parametrize("failing", ["GET", "POST"])
def test_a_github_that_fails_is_a_warning_never_a_failed_job(repo_root, tmp_path, github, failing):
    github.fail[failing] = 502
    done = comment(repo_root, tmp_path, "preview", GITHUB_TOKEN=TOKEN, CIRCLE_PULL_REQUEST=PULL,
                   GITHUB_API_URL=github.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pull request #12: not commented:" in done.stdout + done.stderr and "HTTP 502" in done.stdout + done.stderr
    assert [method for method, _ in github.requests].count("POST") <= 1  # a create is never sent twice


@pytest.mark.parametrize(("env", "said"), [
    ({"CIRCLE_PULL_REQUEST": PULL}, "no GITHUB_TOKEN in this job's context"),
    ({"GITHUB_TOKEN": TOKEN}, "this build is for no pull request"),
])
def test_without_a_token_or_a_pull_request_it_says_so_and_posts_nothing(repo_root, tmp_path, github, env, said):
    done = comment(repo_root, tmp_path, "preview", GITHUB_API_URL=github.url, **env)
    assert done.returncode == 0 and said in done.stdout, done.stdout + done.stderr
    assert github.requests == []
