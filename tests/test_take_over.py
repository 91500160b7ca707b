"""A shared account scope is not reverted behind anyone's back: `inv iam.account` and `inv release`
refuse to replace the account IAM another branch applied, show who applied what, from which branch
and when, and go on only with --take-over. Real git, moto, real Terraform, the CircleCI stand-in."""

from __future__ import annotations

import json

import pytest

from tests.circleci_standin import CircleCIStandIn, job
from tests.project import Project, base_config, git
from tests.test_iam_tasks import BUCKET, assert_user_error, bucket_names, record, s3, ssm  # noqa: F401 (fixtures)

ACCOUNT_RECORD = "/acme-api/iam/account"


def develop_applies_a_newer_account_root(project: Project) -> dict:
    """On develop: change the account root, push, `inv iam.account`; back on staging. Returns develop's record."""
    git(project.path, "checkout", "-q", "-b", "develop")
    path = project.path / "roots" / "account" / "main.tf"
    path.write_text(path.read_text() + "\n# develop's newer account IAM\n")
    git(project.path, "commit", "-q", "-am", "newer account IAM")
    git(project.path, "push", "-q", "-u", "origin", "develop")
    applied = project.inv("iam.account")
    assert applied.code == 0, applied.all
    git(project.path, "checkout", "-q", "staging")
    return applied


@pytest.mark.terraform
def test_account_applied_by_another_branch_needs_take_over(tmp_path, moto_reset, aws_env, ssm):  # noqa: F811
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    develop_applies_a_newer_account_root(project)
    theirs = record(ssm, ACCOUNT_RECORD)

    refused = project.inv("iam.account")
    assert_user_error(refused, "last applied from branch 'develop'", f"commit {theirs['commit'][:12]}",
                      f"by {theirs['applied_by']} at {theirs['applied_at']}", "shared by dev, stg",
                      "inv iam.account --env stg --take-over")
    assert record(ssm, ACCOUNT_RECORD) == theirs  # develop's account IAM is untouched

    automated = project.inv("iam.account", "--yes")
    assert_user_error(automated, "--yes does not answer this", "--take-over")
    assert record(ssm, ACCOUNT_RECORD) == theirs

    taken = project.inv("iam.account", "--take-over")
    assert taken.code == 0, taken.all
    assert "TAKING OVER the shared account scope" in taken.out
    assert record(ssm, ACCOUNT_RECORD)["branch"] == "staging"


@pytest.mark.terraform
def test_account_applied_from_the_same_branch_needs_no_take_over(tmp_path, moto_reset, aws_env, ssm):  # noqa: F811
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    assert project.inv("iam.account").code == 0
    path = project.path / "roots" / "account" / "main.tf"
    path.write_text(path.read_text() + "\n# staging's own next change\n")
    git(project.path, "commit", "-q", "-am", "next change")
    git(project.path, "push", "-q")

    again = project.inv("iam.account")

    assert again.code == 0, again.all
    assert "last applied from this branch, 'staging'" in again.out


def test_record_text_from_outside_is_printed_safely(tmp_path, moto_reset, aws_env, ssm):  # noqa: F811
    project = Project.create(tmp_path, aws_env, base_config(moto_reset))
    project.write_record("account", "dev", endpoint=moto_reset, fingerprint="ab" * 32)
    # another tool wrote the record: a terminal escape in applied_by must not reach the terminal
    value = json.loads(ssm.get_parameter(Name=ACCOUNT_RECORD)["Parameter"]["Value"])
    value["applied_by"] = "arn:aws:iam::123456789012:user/\x1b[2Jmallory"
    ssm.put_parameter(Name=ACCOUNT_RECORD, Value=json.dumps(value), Type="String", Overwrite=True)

    result = project.inv("iam.account")

    assert_user_error(result, "user/[2Jmallory", "--take-over")
    assert "\x1b" not in result.all


@pytest.fixture
def ci():
    with CircleCIStandIn() as standin:
        yield standin


@pytest.mark.terraform
def test_release_refuses_to_revert_another_branch_account_iam(tmp_path, moto_reset, aws_env, ssm, s3, ci):  # noqa: F811
    project = Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(moto_reset))
    develop_applies_a_newer_account_root(project)
    theirs = record(ssm, ACCOUNT_RECORD)
    head = git(project.path, "rev-parse", "HEAD")
    ci.add_pipeline("gh/acme/acme-api", "staging", head, workflows=[("build-test-deploy", "success", [job("test")])])

    refused = project.inv("release", "--env", "stg", "--yes")
    assert_user_error(refused, "last applied from branch 'develop'", theirs["applied_at"], "--yes does not answer",
                      "inv release --env stg --yes --take-over")
    assert "Terraform: plan" not in refused.out  # stopped before the backend, the plan and the apply
    assert record(ssm, ACCOUNT_RECORD) == theirs

    taken = project.inv("release", "--env", "stg", "--yes", "--take-over")
    assert taken.code == 0, taken.all
    assert record(ssm, ACCOUNT_RECORD)["branch"] == "staging"
