"""The fingerprint covers everything the apply reads, in a real git clone, against moto and real Terraform.

A root module that calls a local module (which calls another), reads files outside its directory, or
lies outside the repository; deploy scripts checked out with CR line endings.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.circleci_standin import CircleCIStandIn
from tests.project import FIXTURE_ROOTS, Project, base_config, git

BUCKET = "acme-api-tfstate-123456789012"
PARAMETER = "/acme-api/iam/stg"
SCRIPTS = ["iam/terraform/bin/deploy-app.sh", "iam/terraform/environment-specific/bin/deploy-app.sh"]


@pytest.fixture
def aws(moto_reset, aws_credentials):
    import boto3

    return {name: boto3.client(name, endpoint_url=moto_reset, region_name="eu-west-1") for name in ("s3", "ssm")}


def modular_config(endpoint: str) -> dict:
    config = base_config(endpoint)
    config["terraform"]["roots"]["environment"] = "roots/modular"
    return config


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, modular_config(moto_reset))


def commit_change(project: Project, rel: str, text: str = "\n# a change to what the apply reads\n") -> None:
    path = project.path / rel
    path.write_text(path.read_text() + text)
    git(project.path, "commit", "-q", "-am", f"change {rel}")
    git(project.path, "push", "-q")


def status_line(result, prefix: str) -> str:
    return next(line for line in result.out.splitlines() if line.startswith(prefix))


def nothing_done(aws) -> None:
    """No backend created, no record written."""
    assert BUCKET not in [b["Name"] for b in aws["s3"].list_buckets()["Buckets"]]
    assert not aws["ssm"].get_parameters(Names=[PARAMETER])["Parameters"]


# -- local modules and files outside the root --------------------------------------------------------


@pytest.mark.terraform
def test_change_in_a_module_two_levels_deep_shows_pending(project):
    assert project.inv("iam.account").code == 0
    applied = project.inv("iam.env", "--name", "stg")
    assert applied.code == 0, applied.all
    assert "current" in status_line(project.inv("iam.status"), "environment stg")

    commit_change(project, "roots/modules/role-name/main.tf")  # called by roots/modules/lambda-roles only
    changed = project.inv("iam.status", "--check")
    assert changed.code == 3, changed.all
    assert "change pending" in status_line(changed, "environment stg")
    assert "current" in status_line(changed, "account nonprod")


def test_release_plans_after_a_change_in_a_module_only(tmp_path, moto_reset, aws_env):
    with CircleCIStandIn() as ci:
        project = Project.create(tmp_path, {**aws_env, **ci.env()}, modular_config(moto_reset))
        project.write_record("account", endpoint=moto_reset)
        project.write_record("environment", endpoint=moto_reset)
        before = project.inv("release", "--env", "stg", "--dry-run")
        assert "skip Terraform: plan (environment stg): record current" in before.out, before.all

        commit_change(project, "roots/modules/lambda-roles/main.tf")
        after = project.inv("release", "--env", "stg", "--dry-run")
        assert after.code == 0, after.all
        assert "skip Terraform: plan (environment stg)" not in after.out, after.out
        assert "run  Terraform: plan (environment stg)" in after.out


@pytest.mark.parametrize("rel", ["roots/policies/boundary.json", "roots/policies/trust.json.tpl"],
                         ids=["file", "templatefile"])
def test_change_in_a_file_read_outside_the_root_shows_pending(project, moto_reset, rel):
    project.write_record("account", endpoint=moto_reset)
    project.write_record("environment", endpoint=moto_reset)
    assert "current" in status_line(project.inv("iam.status"), "environment stg")

    commit_change(project, rel, "\n")
    changed = project.inv("iam.status", "--check")
    assert changed.code == 3, changed.all
    assert "change pending" in status_line(changed, "environment stg")


def test_a_clean_checkout_with_crlf_conversion_agrees_with_the_working_clone(project, tmp_path):
    # the pipeline's clean clone, and a Windows laptop's (core.autocrlf=true), compute the same fingerprint
    (project.path / "roots" / "modules" / "lambda-roles" / ".terraform").mkdir()
    (project.path / "roots" / "modules" / "lambda-roles" / ".terraform" / "modules.json").write_text("{}\n")
    for name, options in (("ci", []), ("windows", ["-c", "core.autocrlf=true"])):
        clone = tmp_path / name
        git(tmp_path, "clone", "-q", *options, "-b", "staging", str(project.remote), str(clone))
        fresh = Project(path=clone, remote=project.remote, env=project.env)
        assert fresh.fingerprint("environment") == project.fingerprint("environment"), name
        assert fresh.fingerprint("account") == project.fingerprint("account"), name


def test_a_module_source_that_leaves_the_repository_is_refused(project, aws):
    path = project.path / "roots" / "modular" / "main.tf"
    path.write_text(path.read_text().replace('"../modules/lambda-roles"', '"../../../elsewhere/lambda-roles"'))
    git(project.path, "commit", "-q", "-am", "module from elsewhere")
    git(project.path, "push", "-q")
    result = project.inv("iam.env", "--name", "stg")
    assert result.code != 0 and "Traceback" not in result.all, result.all
    assert "roots/modular/main.tf line" in result.all
    assert "leaves the repository" in result.all
    nothing_done(aws)


# -- a root module outside the checkout ----------------------------------------------------------------


def other_repository(tmp_path):
    """A root module in another repository beside the clone."""
    other = tmp_path / "other-repo" / "root"
    shutil.copytree(FIXTURE_ROOTS / "environment", other)
    return other


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_root_outside_the_checkout_is_refused_before_anything_changes(tmp_path, moto_reset, aws_env, aws, how):
    other = other_repository(tmp_path)
    config = base_config(moto_reset)
    project = Project.create(tmp_path, aws_env, config)
    if how == "absolute":
        config["terraform"]["roots"]["environment"] = str(other)
    elif how == "dotdot":
        config["terraform"]["roots"]["environment"] = "../other-repo/root"
    else:
        (project.path / "roots" / "linked").symlink_to("../../other-repo/root", target_is_directory=True)
        git(project.path, "add", "roots/linked")
        config["terraform"]["roots"]["environment"] = "roots/linked"
    project.commit_config(config)

    result = project.inv("iam.env", "--name", "stg")
    assert result.code != 0, result.all
    assert "Traceback" not in result.all
    assert "lies outside this repository" in result.all
    assert "field terraform.roots.environment" in result.all
    assert "set terraform.roots.environment to a folder inside the repository" in result.all
    nothing_done(aws)

    check = project.inv("config.check")
    assert check.code != 0 and "terraform.roots.environment" in check.all


# -- CR line endings in the deploy scripts --------------------------------------------------------------


def crlf_checkout(project: Project) -> None:
    """What an administrator on Windows has: core.autocrlf=true and a commit without .gitattributes."""
    git(project.path, "rm", "-q", ".gitattributes")
    git(project.path, "commit", "-q", "-m", "an older commit without .gitattributes")
    git(project.path, "push", "-q")
    git(project.path, "config", "core.autocrlf", "true")
    for rel in SCRIPTS:
        (project.path / rel).unlink()
    git(project.path, "checkout", "--", *SCRIPTS)
    assert b"\r\n" in (project.path / SCRIPTS[0]).read_bytes()
    assert git(project.path, "status", "--porcelain") == ""


def test_cr_line_endings_in_the_scripts_stop_before_any_aws_or_terraform_call(project, aws):
    crlf_checkout(project)
    env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["PATH"] = "/usr/bin:/bin"  # neither credentials nor terraform: the finding must come first
    result = project.inv("iam.env", "--name", "stg", env=env)
    assert result.code != 0, result.all
    assert "Traceback" not in result.all
    assert "CR (Windows) line endings" in result.all
    for rel in SCRIPTS:
        assert rel in result.all
    assert "git config core.autocrlf input && rm -f iam/terraform/bin/deploy-app.sh" in result.all
    assert "No AWS credentials" not in result.all and "terraform is not" not in result.all
    nothing_done(aws)
    dry = project.inv("iam.env", "--name", "stg", "--dry-run", env=env)
    assert "would stop a real run" in dry.out and "CR (Windows) line endings" in dry.out, dry.all

    fix = result.all.split("Fix: ", 1)[1].strip().splitlines()[0]
    assert subprocess.run(["bash", "-c", fix], cwd=project.path).returncode == 0
    for rel in SCRIPTS:
        assert b"\r" not in (project.path / rel).read_bytes(), rel
    assert git(project.path, "status", "--porcelain") == ""


def test_gitattributes_keeps_scripts_lf_under_autocrlf(project):
    git(project.path, "config", "core.autocrlf", "true")
    for rel in SCRIPTS:
        (project.path / rel).unlink()
    git(project.path, "checkout", "--", *SCRIPTS)
    for rel in SCRIPTS:
        assert b"\r" not in (project.path / rel).read_bytes(), rel
