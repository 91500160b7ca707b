""""From the branch being deployed" means the team's branch, not a fork's; git's words read right.

Run as users run them (`inv iam.env` in a clone, real git, moto, real Terraform). The clone's
``origin`` plays the administrator's stale fork; ``upstream`` is the team's repository, where a
colleague merged a newer commit.
"""

from __future__ import annotations

import pytest

from tests.project import Project, base_config, git
from tests.test_iam_tasks import assert_user_error, bucket_names, s3  # noqa: F401 (s3 is a fixture)


def colleague_merges(project: Project) -> str:
    """A newer commit on the team's staging (upstream) that the fork (origin) and HEAD lack; its SHA."""
    path = project.path / "roots" / "environment" / "main.tf"
    path.write_text(path.read_text() + "\n# a colleague's change, merged in the team's repository\n")
    git(project.path, "commit", "-q", "-am", "colleague's change")
    git(project.path, "push", "-q", "upstream", "staging")
    merged = git(project.path, "rev-parse", "HEAD")
    git(project.path, "reset", "-q", "--hard", "HEAD~1")
    return merged


@pytest.mark.terraform
@pytest.mark.parametrize("how", ["git.remote", "branch tracks upstream"])
def test_a_head_behind_the_team_branch_is_refused_though_the_fork_matches(tmp_path, moto_reset, aws_env, s3,  # noqa: F811
                                                                          how):
    team = tmp_path / "team.git"
    config = base_config(moto_reset)
    if how == "git.remote":
        config["git"] = {"remote": str(team)}
    project = Project.create(tmp_path, aws_env, config)
    project.add_upstream(team)
    if how == "branch tracks upstream":
        git(project.path, "branch", "-q", "--set-upstream-to=upstream/staging", "staging")
    merged = colleague_merges(project)

    refused = project.inv("iam.env", "--name", "stg")

    assert_user_error(refused, "upstream/staging is " + merged[:12], "remote upstream",
                      "git pull --ff-only upstream staging")
    assert bucket_names(s3) == []  # nothing was created, planned or applied

    git(project.path, "pull", "-q", "--ff-only", "upstream", "staging")
    applied = project.inv("iam.env", "--name", "stg")
    assert applied.code == 0, applied.all
    assert "equal to upstream/staging (remote upstream" in applied.out


def test_a_configured_repository_that_no_remote_points_at_is_refused(tmp_path, moto_reset, aws_env):
    team = tmp_path / "team.git"
    config = {**base_config(moto_reset), "git": {"remote": str(team)}}
    project = Project.create(tmp_path, aws_env, config)

    result = project.inv("iam.env", "--name", "stg")

    assert_user_error(result, f"No git remote of this checkout points at the team's repository {team}",
                      "config field git.remote", f"git remote add upstream {team}")


def test_uncommitted_change_names_the_whole_path(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    path = project.path / "config" / "environments.yml"
    path.write_text(path.read_text() + "# edited\n")

    result = project.inv("iam.env", "--name", "stg")

    assert_user_error(result, "uncommitted changes (config/environments.yml)")
