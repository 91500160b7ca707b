"""What an apply reads is exactly HEAD's commit, whatever git's own view (ignore rules, skip-worktree,
submodule settings) hides; remote modules are pinned; a detached HEAD is named as such.

Each test is an attack that once applied IAM other than HEAD's while the applied record named HEAD.
Real git clones (tests/project.py), a moto server, and the runbook run as a user runs it.
"""

from __future__ import annotations

import subprocess

import pytest

from runbook import fingerprint
from runbook.errors import RunbookError
from tests.project import Project, base_config, git
from tests.test_fingerprint_project import modular_config, nothing_done
from tests.test_iam_tasks import assert_user_error as refused

OVERRIDE = 'output "lambda_role_names" {\n  value = ["acme-api-stg-lambda-UNCOMMITTED"]\n}\n'


@pytest.fixture
def aws(moto_reset, aws_credentials):
    import boto3

    return {name: boto3.client(name, endpoint_url=moto_reset, region_name="eu-west-1") for name in ("s3", "ssm")}


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


@pytest.fixture
def modular(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, modular_config(moto_reset))


def git_status_is_clean(project: Project) -> None:
    assert git(project.path, "status", "--porcelain") == ""


# -- files Terraform loads are hashed, whatever their name -----------------------------------------


def test_ignored_override_named_like_state_is_refused(modular, aws):
    (modular.path / "roots" / "modular" / "terraform.tfstate.x_override.tf").write_text(OVERRIDE)
    git_status_is_clean(modular)  # .gitignore's terraform.tfstate* hides it from git
    result = modular.inv("iam.env", "--name", "stg")
    refused(result, "git does not track in HEAD", "roots/modular/terraform.tfstate.x_override.tf", "git add -f")
    nothing_done(aws)


def test_ignored_auto_tfvars_named_like_state_is_refused(project, aws):
    (project.path / "roots" / "environment" / "terraform.tfstate.auto.tfvars").write_text('environment = "prod"\n')
    git_status_is_clean(project)
    result = project.inv("iam.env", "--name", "stg")
    refused(result, "git does not track in HEAD", "roots/environment/terraform.tfstate.auto.tfvars")
    nothing_done(aws)


def test_committed_override_named_like_state_changes_the_fingerprint(project):
    before = project.fingerprint("environment")
    override = project.path / "roots" / "environment" / "roles.tfstate.x_override.tf"
    override.write_text(OVERRIDE)
    git(project.path, "add", str(override))
    git(project.path, "commit", "-q", "-m", "change the lambda roles")
    assert project.fingerprint("environment") != before


@pytest.mark.parametrize("name", ["a.tfstate.b_override.tf", "terraform.tfstate.auto.tfvars",
                                  "x.tfstate.tf.json", "x.tfstate.auto.tfvars.json"])
def test_every_file_terraform_loads_is_hashed(tmp_path, name):
    (tmp_path / "main.tf").write_text("locals {}\n")
    before = fingerprint.compute(tmp_path, {}, {})
    (tmp_path / name).write_text("{}\n")
    assert fingerprint.compute(tmp_path, {}, {}) != before
    assert name in fingerprint.root_files(tmp_path)


# -- git's view is not trusted -------------------------------------------------------------------


def test_skip_worktree_edit_is_refused(project, aws):
    main = project.path / "roots" / "environment" / "main.tf"
    git(project.path, "update-index", "--skip-worktree", "roots/environment/main.tf")
    main.write_text(main.read_text() + '\noutput "backdoor" {\n  value = "x"\n}\n')
    git_status_is_clean(project)
    result = project.inv("iam.env", "--name", "stg")
    refused(result, "differ from HEAD's version (roots/environment/main.tf)", "--no-skip-worktree")
    nothing_done(aws)


def test_ignored_link_to_a_tracked_file_is_refused(project, aws):
    (project.path / ".git" / "info" / "exclude").write_text("zz_override.tf\n")
    (project.path / "roots" / "environment" / "zz_override.tf").symlink_to("../account/main.tf")
    git_status_is_clean(project)
    result = project.inv("iam.env", "--name", "stg")
    refused(result, "git does not track in HEAD (roots/environment/zz_override.tf)")
    nothing_done(aws)


def test_committed_link_to_a_module_passes(tmp_path, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(None))
    (project.path / "roots" / "environment" / "linked.tf").symlink_to("../account/main.tf")
    git(project.path, "add", "-A")
    git(project.path, "commit", "-q", "-m", "a linked file")
    git(project.path, "push", "-q")
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert "hashed files are HEAD's" in result.out, result.all


def test_excluded_override_in_a_local_module_is_refused(modular, aws):
    (modular.path / ".git" / "info" / "exclude").write_text("names_override.tf\n")
    module = modular.path / "roots" / "modules" / "lambda-roles"
    (module / "names_override.tf").write_text('output "names" {\n  value = ["acme-api-stg-lambda-EVIL"]\n}\n')
    git_status_is_clean(modular)
    result = modular.inv("iam.env", "--name", "stg")
    refused(result, "roots/modules/lambda-roles/names_override.tf", "git does not track in HEAD")
    nothing_done(aws)


def test_module_in_a_submodule_is_refused(modular, aws, tmp_path):
    source = tmp_path / "sub-src"
    source.mkdir()
    (source / "main.tf").write_text('output "v" {\n  value = "committed"\n}\n')
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "s")
    git(modular.path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(source), "roots/modules/sub")
    (modular.path / "roots" / "modular" / "sub.tf").write_text('module "sub" {\n  source = "../modules/sub"\n}\n')
    git(modular.path, "add", "-A")
    git(modular.path, "commit", "-q", "-m", "sub")
    git(modular.path, "push", "-q")
    sub_main = modular.path / "roots" / "modules" / "sub" / "main.tf"
    sub_main.write_text(sub_main.read_text().replace("committed", "DIRTY-IN-SUBMODULE"))
    git(modular.path, "config", "submodule.roots/modules/sub.ignore", "all")
    git_status_is_clean(modular)
    result = modular.inv("iam.env", "--name", "stg")
    refused(result, "roots/modules/sub, a git submodule", "copy the module into this repository")
    nothing_done(aws)


def test_crlf_checkout_of_head_passes(tmp_path, aws_env):
    project = Project.create(tmp_path, aws_env, base_config(None))
    git(project.path, "config", "core.autocrlf", "true")
    main = project.path / "roots" / "environment" / "main.tf"
    main.unlink()
    git(project.path, "checkout", "--", "roots/environment/main.tf")
    assert b"\r\n" in main.read_bytes()
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert "Traceback" not in result.all, result.all
    assert "hashed files are HEAD's" in result.out, result.all


# -- remote modules must be pinned ------------------------------------------------------------------


def test_unpinned_git_module_is_refused_with_file_and_line(project, aws, tmp_path):
    ext = tmp_path / "ext.git"
    git(tmp_path, "init", "-q", "--bare", str(ext))
    (project.path / "roots" / "environment" / "ext.tf").write_text(
        f'# an external module\nmodule "ext" {{\n  source = "git::file://{ext}"\n}}\n')
    git(project.path, "add", "-A")
    git(project.path, "commit", "-q", "-m", "ext")
    git(project.path, "push", "-q")
    result = project.inv("iam.env", "--name", "stg")
    refused(result, "is not pinned (no ref=)", "roots/environment/ext.tf line 3", "?ref=", f"git ls-remote file://{ext}")
    nothing_done(aws)


@pytest.mark.parametrize("module, ok", [
    ('source = "github.com/acme/iam-modules"', False),
    ('source = "git::https://example.com/x.git//roles"', False),
    ('source = "git@github.com:acme/x.git"', False),
    ('source = "https://example.com/vpc.zip"', False),
    ('source = "s3::https://s3-eu-west-1.amazonaws.com/b/vpc.zip"', False),
    ('source = "hashicorp/consul/aws"', False),
    ('source = "app.terraform.io/acme/roles/aws"', False),
    ('source = "git::https://example.com/x.git//roles?ref=51d462976d84fdea54b47d80dcabbf680badcdb8"', True),
    ('source = "github.com/acme/iam-modules?ref=v1.2.0"', True),
    ('source  = "hashicorp/consul/aws"\n  version = "0.1.0"', True),
])
def test_remote_module_sources_must_be_pinned(tmp_path, module, ok):
    (tmp_path / "main.tf").write_text(f'module "x" {{\n  {module}\n}}\n')
    if ok:
        fingerprint.compute(tmp_path, {}, {})
        return
    with pytest.raises(RunbookError) as caught:
        fingerprint.compute(tmp_path, {}, {})
    assert caught.value.id == "module-source-unpinned"
    assert "main.tf line 2" in str(caught.value)


def test_unpinned_module_in_json_syntax_is_refused(tmp_path):
    (tmp_path / "main.tf").write_text("locals {}\n")
    (tmp_path / "ext.tf.json").write_text('{"module": {"x": {"source": "github.com/acme/iam-modules"}}}\n')
    with pytest.raises(RunbookError, match="not pinned"):
        fingerprint.compute(tmp_path, {}, {})


# -- a detached HEAD -----------------------------------------------------------------------------------


def test_detached_head_is_named_and_the_fix_works(project, aws):
    git(project.path, "checkout", "-q", "--detach")
    head = git(project.path, "rev-parse", "HEAD")
    result = project.inv("iam.env", "--name", "stg")
    refused(result, f"HEAD is detached at {head[:12]}", "git checkout staging")
    assert "branch 'HEAD'" not in result.all
    skipped = project.inv("iam.env", "--name", "stg", "--skip-branch-check")
    refused(skipped, f"HEAD is detached at {head[:12]}", "--skip-branch-check needs a branch", "git checkout staging")
    assert "push -u origin HEAD" not in skipped.all
    nothing_done(aws)
    fix = subprocess.run(["git", "checkout", "-q", "staging"], cwd=project.path, capture_output=True, text=True)
    assert fix.returncode == 0, fix.stderr


# -- the dry run quotes what it prints -------------------------------------------------------------------


def test_dry_run_quotes_the_branch(tmp_path, aws_env):
    branch = "st$(touch${IFS}x)"
    config = base_config(None)
    config["environments"]["stg"]["branch"] = branch
    project = Project.create(tmp_path, aws_env, config, branch=branch)
    result = project.inv("iam.env", "--name", "stg", "--dry-run")
    assert "Traceback" not in result.all, result.all
    assert "git fetch origin 'st$(touch${IFS}x)'" in result.out, result.all


def test_hashed_files_lists_modules_and_scripts(tmp_path):
    (tmp_path / ".git").mkdir()
    root, module = tmp_path / "root", tmp_path / "modules" / "m"
    root.mkdir()
    module.mkdir(parents=True)
    (root / "main.tf").write_text('module "m" {\n  source = "../modules/m"\n}\n')
    (module / "main.tf").write_text("locals {}\n")
    (tmp_path / "deploy.sh").write_text("#!/bin/bash\n")
    listed = fingerprint.hashed_files(root, {"deploy.sh": tmp_path / "deploy.sh"}, top=tmp_path)
    assert listed == [str(root / "main.tf"), str(module / "main.tf"), str(tmp_path / "deploy.sh")]
