"""Terraform's version rules, git's status parsing, and what a snapshot refuses."""

from __future__ import annotations

import pytest

from runbook import git, snapshot, versions
from runbook.errors import RunbookError
from runbook.scopes import Scope


@pytest.mark.parametrize("version, constraint, expected", [
    ("1.0.3", ">= 1.0.0", True), ("1.11.4", "~> 1.0", True), ("2.0.0", "~> 1.0", False),
    ("1.0.3", "~> 1.0.0", True), ("1.1.0", "~> 1.0.0", False), ("1.11.4", ">= 1.10, < 2.0", True),
    ("1.5.0", "!= 1.5.0", False), ("1.5.0", "1.5.0", True), ("1.5.1", "= 1.5.0", False),
    ("1.10.0-alpha20240606", ">= 1.10", False),        # a pre-release never satisfies >= (go-version)
    ("1.10.0-alpha20240606", ">= 1.9", False),
    ("1.10.0-alpha20240606", "= 1.10.0-alpha20240606", True),
    ("1.10.0", "> 1.10.0-beta1", True),
    ("1.0.0", "= 1.0", True), ("1.0.0", "!= 1.0", False),  # "1.0" is 1.0.0, however many numbers were written
])
def test_terraforms_version_constraints(version, constraint, expected):
    assert versions.satisfies(version, constraint) is expected


@pytest.mark.parametrize("constraint", ["latest", ">= one", "~>", "", "< 1.0, garbage", "> 9.0, ~> 1.0, x"])
def test_an_unreadable_constraint_is_named(constraint):
    assert "is not a Terraform version constraint" in versions.constraint_problem(constraint)


@pytest.mark.parametrize("constraint", ["~> 1.0.0-beta", ">= 1.0.0-beta", ">= 1.0, < 2.0.0-rc1"])
def test_a_constraint_on_a_pre_release_is_refused_as_terraform_refuses_it(constraint):
    assert "names a pre-release" in versions.constraint_problem(constraint)
    assert versions.constraint_problem("~> 1.0") is None


def test_a_constraint_is_read_whole_whatever_the_version():
    """A part that cannot be read is refused even after a part the version fails (it was once never read, so the
    configuration check passed "< 1.0, garbage" and the run with Terraform 0.15 raised a ValueError)."""
    with pytest.raises(ValueError):
        versions.satisfies("1.5.0", "< 1.0, garbage")


def test_a_terraform_that_does_not_satisfy_the_configuration_is_refused():
    with pytest.raises(RunbookError) as caught:
        versions.Terraform().check(versions.Found("/bin/terraform", "0.15.0"), "~> 1.0", "config")
    assert caught.value.id == "terraform-version" and "0.15.0" in caught.value.what


def test_git_status_porcelain_v2_gives_branch_head_and_changes():
    out = "\0".join(["# branch.oid " + "a" * 40, "# branch.head staging", "# branch.upstream origin/staging",
                     "1 .M N... 100644 100644 100644 1 2 iam/terraform/bin/deploy-app.sh",
                     "2 R. N... 100644 100644 100644 1 2 R100 docs/new name.md", "docs/old.md",
                     "? roots/extra file.tf", ""])
    checkout = git.parse_status(out)
    assert checkout.branch == "staging" and checkout.head == "a" * 40
    assert checkout.changes == ("iam/terraform/bin/deploy-app.sh", "docs/new name.md", "roots/extra file.tf")
    assert checkout.changed_under(["iam/terraform/bin", "roots/extra"]) == ["iam/terraform/bin/deploy-app.sh"]


def test_git_status_of_a_detached_head_and_of_no_commit():
    assert git.parse_status("# branch.oid " + "b" * 40 + "\0# branch.head (detached)\0").detached
    with pytest.raises(RunbookError):
        git.parse_status("# branch.oid (initial)\0# branch.head main\0")


@pytest.mark.parametrize("a, b, same", [
    ("git@github.com:acme/api.git", "https://github.com/acme/api", True),
    ("https://GitHub.com/Acme/API/", "ssh://git@github.com/acme/api.git", True),
    ("https://github.com/acme/api", "https://github.com/fork/api", False),
])
def test_remote_urls_name_one_repository(a, b, same):
    assert git.same_repository(a, b) is same


@pytest.mark.parametrize("source, pinned", [
    ("../modules/roles", True), ("./x", True),
    ("terraform-aws-modules/iam/aws", False), ("app.terraform.io/acme/iam/aws", False),
    ("git::https://github.com/acme/mods.git//roles?ref=1a2b3c4d", True),
    ("git::https://github.com/acme/mods.git//roles", False), ("github.com/acme/mods", False),
    ("github.com/acme/mods?ref=v1.2.0", True), ("s3::https://s3.amazonaws.com/b/m.zip", False),
])
def test_a_remote_module_source_must_be_pinned(source, pinned):
    assert (snapshot._unpinned(source, has_version=False) is None) is pinned


def test_a_registry_module_is_pinned_by_its_version():
    assert snapshot._unpinned("terraform-aws-modules/iam/aws", has_version=True) is None
    assert "git ls-remote https://github.com/acme/mods" in snapshot._unpinned("github.com/acme/mods//x", False)


def test_only_files_with_a_module_block_are_parsed_and_unpinned_sources_named(cfg, tmp_path):
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    root = tmp_path / scope.root
    root.mkdir(parents=True)
    (root / "versions.tf").write_text('terraform {\n  required_version = "~> 1.0"\n}\n# not hcl: {{{ \n')
    (root / "main.tf").write_text('locals {\n  p = path.module\n}\nmodule "x" {\n  source = "git::https://e.com/m.git"\n}\n'
                                  'module "y" {\n  source = "../modules/y"\n}\n')
    problems = snapshot.unpinned_modules(snapshot.Snapshot(tmp_path, root, tmp_path / "s"), scope)
    assert len(problems) == 1 and problems[0].startswith("module x in iam/terraform/environment-specific/main/main.tf")


def test_a_tf_file_that_is_not_hcl_is_named(cfg, tmp_path):
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    root = tmp_path / scope.root
    root.mkdir(parents=True)
    (root / "main.tf").write_text('module "x" {\n  source = "git::https://e.com/m.git"\n  = oops\n')
    with pytest.raises(RunbookError) as caught:
        snapshot.unpinned_modules(snapshot.Snapshot(tmp_path, root, tmp_path / "s"), scope)
    assert caught.value.id == "tf-file-invalid" and "main.tf" in caught.value.what


def test_what_a_failed_run_left_stops_the_next_with_the_recovery(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    root = snapshot.folder(scope) / scope.root
    root.mkdir(parents=True)
    assert snapshot.leftovers(scope, "inv iam.env --name stg") is None
    (root / "crash.log").write_text("panic")
    assert snapshot.leftovers(scope, "inv iam.env --name stg").id == "terraform-crashed"
    (root / "errored.tfstate").write_text("{}")
    found = snapshot.leftovers(scope, "inv iam.env --name stg")
    assert found.id == "errored-tfstate" and "terraform state push errored.tfstate" in found.fix


def test_each_account_and_environment_has_its_own_working_folder(cfg):
    folders = {snapshot.folder(Scope.of_account(cfg, a)) for a in cfg.accounts.values()}
    folders |= {snapshot.folder(Scope.of_environment(cfg, e)) for e in cfg.environments.values()}
    assert len(folders) == len(cfg.accounts) + len(cfg.environments)


def test_an_unpinned_module_in_json_syntax_is_named_too(cfg, tmp_path):
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    root = tmp_path / scope.root
    root.mkdir(parents=True)
    (root / "main.tf.json").write_text('{"module": {"x": {"source": "terraform-aws-modules/iam/aws"}}}')
    [problem] = snapshot.unpinned_modules(snapshot.Snapshot(tmp_path, root, tmp_path / "s"), scope)
    assert problem.startswith("module x in iam/terraform/environment-specific/main/main.tf.json: the registry module")
