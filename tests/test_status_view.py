"""What `inv iam.status` shows and suggests, as the administrator reads it."""

from __future__ import annotations

from tests.project import Project, base_config


def test_status_suggests_commands_that_work_from_the_checked_out_branch(tmp_path, moto_reset, aws_env):
    config = base_config(moto_reset)
    config["environments"]["dev"]["branch"] = "feature/x;touch-pwned"  # a branch that needs quoting
    project = Project.create(tmp_path, aws_env, config)  # on staging, nothing applied
    result = project.inv("iam.status")
    assert result.code == 0, result.all
    lines = [line.strip() for line in result.out.splitlines()]
    # the account of the checked-out environment is applied through it, without a checkout
    assert "inv iam.account --env stg" in lines
    assert "inv iam.account --env dev" not in result.out
    assert "inv iam.env --name stg" in lines
    # other branches' steps say how to get there, the branch quoted for the shell
    assert "git checkout 'feature/x;touch-pwned' && git pull --ff-only && inv iam.env --name dev" in lines
    assert "git checkout prod && git pull --ff-only && inv iam.account --env prod" in lines


def test_status_shows_the_branch_of_a_record_and_marks_rehearsal_accounts(tmp_path, moto_reset, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    project.write_record("environment", "stg", endpoint=moto_reset)
    result = project.inv("iam.status")
    assert result.code == 0, result.all
    header = result.out.splitlines()[0]
    assert "branch" in header
    stg = next(line for line in result.out.splitlines() if line.startswith("environment stg"))
    assert "[rehearsal]" in stg and "staging" in stg
