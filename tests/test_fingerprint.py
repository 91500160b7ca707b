"""The fingerprint changes exactly when what an apply would put into AWS changes."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from runbook import fingerprint
from runbook.errors import RunbookError

MAIN_TF = 'resource "aws_iam_role" "lambda" {\n  name = "acme-api-${var.environment}-lambda"\n}\n'
VARIABLES_TF = 'variable "environment" {\n  type = string\n}\n'
LOCK = '# This file is maintained automatically by "terraform init".\nprovider "registry.terraform.io/hashicorp/aws" {\n  version = "5.40.0"\n}\n'  # noqa: E501
SCRIPT = "#!/usr/bin/env bash\nset -euo pipefail\nterraform apply \"$PLAN\"\n"
INPUTS = {
    "environment": "stg",
    "account_id": "123456789012",
    "region": "eu-west-1",
    "state_bucket": "acme-api-tfstate-123456789012",
    "lock_table": "acme-api-tf-locks",
}


def make_checkout(base: Path) -> tuple[Path, dict[str, Path]]:
    """A small repository layout: a root module, a nested module and the shared script."""
    root = base / "iam" / "terraform" / "environment-specific" / "main"
    (root / "modules" / "role").mkdir(parents=True)
    (root / "main.tf").write_text(MAIN_TF)
    (root / "variables.tf").write_text(VARIABLES_TF)
    (root / ".terraform.lock.hcl").write_text(LOCK)
    (root / "modules" / "role" / "main.tf").write_text('output "name" {\n  value = "x"\n}\n')
    script = base / "iam" / "terraform" / "shared" / "deploy-app.sh"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT)
    return root, {"deploy-app.sh": script}


@pytest.fixture
def checkout(tmp_path):
    return make_checkout(tmp_path / "checkout")


def fp(root, shared, inputs=INPUTS, **kwargs):
    return fingerprint.compute(root, shared, inputs, **kwargs)


def test_hash_is_64_hex_and_stable(checkout):
    root, shared = checkout
    first = fp(root, shared)
    assert len(first) == 64 and int(first, 16) >= 0
    assert fp(root, shared) == first


def test_same_content_in_another_checkout_path_gives_same_hash(tmp_path):
    root_a, shared_a = make_checkout(tmp_path / "a")
    root_b, shared_b = make_checkout(tmp_path / "somewhere" / "else" / "b")
    assert fp(root_a, shared_a) == fp(root_b, shared_b)


def test_relative_and_absolute_root_give_same_hash(checkout, monkeypatch):
    root, shared = checkout
    absolute = fp(root, shared)
    monkeypatch.chdir(root.parent)
    assert fp("main", shared) == absolute


def test_crlf_and_cr_line_endings_give_same_hash_as_lf(checkout):
    root, shared = checkout
    before = fp(root, shared)
    (root / "main.tf").write_bytes(MAIN_TF.replace("\n", "\r\n").encode())
    (root / "variables.tf").write_bytes(VARIABLES_TF.replace("\n", "\r").encode())
    shared["deploy-app.sh"].write_bytes(SCRIPT.replace("\n", "\r\n").encode())
    assert fp(root, shared) == before


def test_binary_file_is_hashed_byte_for_byte(checkout):
    root, shared = checkout
    (root / "blob.bin").write_bytes(b"\xff\xfe\r\n\x00")
    with_crlf = fp(root, shared)
    (root / "blob.bin").write_bytes(b"\xff\xfe\n\x00")
    assert fp(root, shared) != with_crlf


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_file_mode_change_gives_same_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    os.chmod(root / "main.tf", 0o755)
    os.chmod(shared["deploy-app.sh"], 0o600)
    assert fp(root, shared) == before


@pytest.mark.parametrize(
    "litter",
    [
        ".terraform/providers/registry.terraform.io/hashicorp/aws/5.40.0/linux_amd64/terraform-provider-aws",
        ".terraform/terraform.tfstate",
        "terraform.tfstate",
        "terraform.tfstate.backup",
        ".terraform.tfstate.lock.info",
        "terraform.tfstate.d/stg/terraform.tfstate",
        "stg.tfplan",
        "stg.tfplan.json",
        "tfplan",
        "crash.log",
        "main.tf~",
        ".main.tf.swp",
        ".main.tf.swo",
        ".#main.tf",
        "#main.tf#",
        ".DS_Store",
        "__pycache__/x.cpython-312.pyc",
        ".idea/workspace.xml",
        ".vscode/settings.json",
        "main.tf.orig",
        "main.tf.rej",
        "modules/role/.DS_Store",
        "modules/role/.terraform/x",
    ],
)
def test_ignored_litter_gives_same_hash(checkout, litter):
    root, shared = checkout
    before = fp(root, shared)
    path = root / litter
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"state, plans and editor files are not what is applied\n")
    assert fp(root, shared) == before
    assert litter not in fingerprint.root_files(root)


def test_lock_file_written_by_init_is_not_hashed(checkout):
    # terraform init writes it on a laptop; the pipeline's clean checkout has none
    root, shared = checkout
    before = fp(root, shared)
    (root / ".terraform.lock.hcl").write_text(LOCK.replace("5.40.0", "5.41.0"))
    assert fp(root, shared) == before
    assert ".terraform.lock.hcl" not in fingerprint.root_files(root)


def test_content_change_gives_different_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    (root / "main.tf").write_text(MAIN_TF.replace("lambda", "lambda2"))
    assert fp(root, shared) != before


def test_change_in_nested_module_gives_different_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    (root / "modules" / "role" / "main.tf").write_text('output "name" {\n  value = "y"\n}\n')
    assert fp(root, shared) != before


def test_rename_gives_different_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    (root / "variables.tf").rename(root / "vars.tf")
    assert fp(root, shared) != before


def test_added_file_gives_different_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    (root / "outputs.tf").write_text("")
    assert fp(root, shared) != before


def test_moving_a_byte_between_files_gives_different_hash(checkout):
    root, shared = checkout
    (root / "a.tf").write_text("# ab\n")
    (root / "b.tf").write_text("# c\n")
    before = fp(root, shared)
    (root / "a.tf").write_text("# a\n")
    (root / "b.tf").write_text("b# c\n")
    assert fp(root, shared) != before


def test_moving_bytes_between_path_and_content_gives_different_hash(checkout):
    root, shared = checkout
    (root / "x.tf").write_text("1")
    before = fp(root, shared)
    (root / "x.tf").unlink()
    (root / "x.tf1").write_text("")
    assert fp(root, shared) != before


def test_changed_shared_script_gives_different_hash(checkout):
    root, shared = checkout
    before = fp(root, shared)
    shared["deploy-app.sh"].write_text(SCRIPT + "echo done\n")
    assert fp(root, shared) != before


def test_shared_script_is_named_by_logical_name_not_path(checkout, tmp_path):
    root, shared = checkout
    before = fp(root, shared)
    elsewhere = tmp_path / "copy" / "deploy.sh"
    elsewhere.parent.mkdir()
    shutil.copy(shared["deploy-app.sh"], elsewhere)
    assert fp(root, {"deploy-app.sh": elsewhere}) == before
    assert fp(root, {"other-name.sh": elsewhere}) != before


@pytest.mark.parametrize(
    "change",
    [
        {"environment": "prod"},
        {"account_id": "210987654321"},
        {"region": "eu-central-1"},
        {"state_bucket": "acme-api-tfstate-210987654321"},
        {"lock_table": "other-locks"},
        {"extra": ""},
    ],
)
def test_changed_input_gives_different_hash(checkout, change):
    root, shared = checkout
    assert fp(root, shared, {**INPUTS, **change}) != fp(root, shared)


def test_input_order_does_not_matter(checkout):
    root, shared = checkout
    reversed_inputs = dict(reversed(list(INPUTS.items())))
    assert fp(root, shared, reversed_inputs) == fp(root, shared)


def test_non_string_input_is_refused(checkout):
    root, shared = checkout
    with pytest.raises(TypeError, match="account_id"):
        fp(root, shared, {**INPUTS, "account_id": 123456789012})


def test_missing_root_names_path_and_config_field(tmp_path):
    missing = tmp_path / "iam" / "terraform" / "nowhere"
    with pytest.raises(RunbookError) as caught:
        fingerprint.compute(missing, {}, INPUTS)
    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert "terraform.roots" in str(caught.value)
    assert "config/environments.yml" in str(caught.value)


def test_root_without_tf_files_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("not a module\n")
    with pytest.raises(RunbookError, match="no .tf file"):
        fingerprint.compute(tmp_path, {}, INPUTS)


def test_missing_shared_script_is_refused(checkout):
    root, shared = checkout
    shared["deploy-app.sh"].unlink()
    with pytest.raises(RunbookError, match="deploy-app.sh"):
        fp(root, shared)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinked_module_directory_is_hashed(checkout, tmp_path):
    root, shared = checkout
    top = tmp_path / "checkout"
    target = top / "iam" / "linked-module"
    target.mkdir()
    (target / "main.tf").write_text("# v1\n")
    (root / "linked").symlink_to(target, target_is_directory=True)
    before = fp(root, shared, top=top)
    assert "linked/main.tf" in fingerprint.root_files(root, top=top)
    (target / "main.tf").write_text("# v2\n")
    assert fp(root, shared, top=top) != before


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_that_leaves_the_repository_is_refused(checkout, tmp_path):
    root, shared = checkout
    target = tmp_path / "another-repository" / "module"
    target.mkdir(parents=True)
    (target / "main.tf").write_text("# not in this commit\n")
    (root / "linked").symlink_to(target, target_is_directory=True)
    with pytest.raises(RunbookError, match="linked is a symbolic link that leaves the repository") as caught:
        fp(root, shared, top=tmp_path / "checkout")
    assert "git rm" in str(caught.value)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_loop_terminates(checkout):
    root, shared = checkout
    (root / "modules" / "role" / "loop").symlink_to(root, target_is_directory=True)
    assert len(fp(root, shared)) == 64


def test_describe_lists_parts_in_hash_order(checkout):
    root, shared = checkout
    parts = fingerprint.describe(root, shared, INPUTS)
    assert [(p.kind, p.name) for p in parts] == [
        ("root", "main.tf"),
        ("root", "modules/role/main.tf"),
        ("root", "variables.tf"),
        ("shared", "deploy-app.sh"),
        ("inputs", "inputs"),
    ]
    assert parts[0].size == len(MAIN_TF)
    assert all(len(p.sha256) == 64 for p in parts)


# -- what the apply reads outside the root module (format 2) -------------------------------------------


def modular_checkout(base: Path) -> tuple[Path, Path, dict[str, Path]]:
    """A repository whose root calls a local module that calls another, and reads files outside."""
    root, shared = make_checkout(base)
    top = base
    (root / "calls.tf").write_text(
        'module "roles" {\n  source = "../../modules/lambda-roles"\n}\n\n'
        'locals {\n  boundary = file("${path.module}/../../policies/boundary.json")\n}\n')
    roles = top / "iam" / "terraform" / "modules" / "lambda-roles"
    roles.mkdir(parents=True)
    (roles / "main.tf").write_text(
        'module "name" {\n  source = "../role-name"\n}\n\n'
        'locals {\n  trust = templatefile("${path.module}/trust.json.tpl", {})\n'
        '  per_env = file("${path.module}/../../policies/env/${var.environment}.json")\n}\n')
    (roles / "trust.json.tpl").write_text("{}\n")
    name = top / "iam" / "terraform" / "modules" / "role-name"
    name.mkdir()
    (name / "main.tf").write_text('output "value" {\n  value = "x"\n}\n')
    (top / "iam" / "terraform" / "policies" / "env").mkdir(parents=True)
    (top / "iam" / "terraform" / "policies" / "boundary.json").write_text("{}\n")
    (top / "iam" / "terraform" / "policies" / "env" / "stg.json").write_text("{}\n")
    (top / "iam" / "terraform" / "policies" / "unrelated.json").write_text("{}\n")
    return top, root, shared


@pytest.fixture
def modular(tmp_path):
    return modular_checkout(tmp_path / "checkout")


def test_format_version_is_2():
    assert fingerprint.FORMAT_HEADER == b"runbook-fingerprint/2\n"


@pytest.mark.parametrize("rel", [
    "iam/terraform/modules/lambda-roles/main.tf",  # the module the root calls
    "iam/terraform/modules/role-name/main.tf",  # the module that module calls
    "iam/terraform/modules/lambda-roles/trust.json.tpl",  # templatefile() in a module
    "iam/terraform/policies/boundary.json",  # file() outside the root
    "iam/terraform/policies/env/stg.json",  # file() with an expression after a directory
])
def test_change_to_what_the_apply_reads_outside_the_root_gives_different_hash(modular, rel):
    top, root, shared = modular
    before = fp(root, shared, top=top)
    (top / rel).write_text((top / rel).read_text() + "# changed\n")
    assert fp(root, shared, top=top) != before


def test_files_the_apply_does_not_read_are_not_hashed(modular):
    top, root, shared = modular
    before = fp(root, shared, top=top)
    (top / "iam" / "terraform" / "policies" / "unrelated.json").write_text('{"changed": true}\n')
    (top / "README.md").write_text("not configuration\n")
    assert fp(root, shared, top=top) == before


def test_describe_names_files_outside_the_root_by_repository_path(modular):
    top, root, shared = modular
    names = [(p.kind, p.name) for p in fingerprint.describe(root, shared, INPUTS, top=top)]
    assert ("outside", "iam/terraform/modules/role-name/main.tf") in names
    assert ("outside", "iam/terraform/policies/env/stg.json") in names
    assert ("outside", "iam/terraform/policies/boundary.json") in names
    assert all(name != "iam/terraform/policies/unrelated.json" for _, name in names)


def test_same_modular_content_in_another_checkout_path_gives_same_hash(tmp_path):
    top_a, root_a, shared_a = modular_checkout(tmp_path / "a")
    top_b, root_b, shared_b = modular_checkout(tmp_path / "else" / "b")
    assert fp(root_a, shared_a, top=top_a) == fp(root_b, shared_b, top=top_b)


def test_a_missing_file_a_file_function_names_is_part_of_the_hash(modular):
    top, root, shared = modular
    (root / "exists.tf").write_text('locals {\n  has = fileexists("${path.module}/../optional.json")\n}\n')
    before = fp(root, shared, top=top)
    assert ("absent", "iam/terraform/environment-specific/optional.json") in [
        (p.kind, p.name) for p in fingerprint.describe(root, shared, INPUTS, top=top)]
    (root.parent / "optional.json").write_text("{}\n")
    assert fp(root, shared, top=top) != before


def test_module_text_in_a_comment_is_not_a_module_call(checkout):
    # the parser reads HCL: a commented-out block calls nothing
    root, shared = checkout
    (root / "old.tf").write_text('# module "gone" {\n#   source = "../../../../../elsewhere"\n# }\n')
    assert len(fp(root, shared)) == 64


def test_registry_module_is_not_read_from_disk(checkout):
    root, shared = checkout
    (root / "vpc.tf").write_text('module "vpc" {\n  source  = "terraform-aws-modules/vpc/aws"\n'
                                 '  version = "5.0.0"\n}\n')
    assert len(fp(root, shared)) == 64


@pytest.mark.parametrize(("text", "needle"), [
    ('module "x" {\n  source = "../../../../../elsewhere"\n}\n', "The local module source '../../../../../elsewhere'"),
    ('module "x" {\n  source = "/opt/modules/x"\n}\n', "an absolute path"),
    ('locals {\n  p = file("${path.module}/../../../../../etc/x.json")\n}\n', "leaves the repository"),
    ('locals {\n  p = file("/etc/passwd")\n}\n', "an absolute path"),
    ('locals {\n  p = file(var.policy_path)\n}\n', "cannot tell which file"),
    ('locals {\n  p = <<EOT\n${file("../x.json")}\nEOT\n}\n', "heredoc"),
])
def test_reference_that_leaves_the_repository_or_cannot_be_placed_is_refused(checkout, tmp_path, text, needle):
    root, shared = checkout
    (root / "refs.tf").write_text("\n\n" + text)
    with pytest.raises(RunbookError) as caught:
        fp(root, shared, top=tmp_path / "checkout")
    message = str(caught.value)
    assert needle in message
    assert "refs.tf line 4" in message
    assert "Fix:" in message


def test_missing_local_module_is_refused(checkout, tmp_path):
    root, shared = checkout
    (root / "calls.tf").write_text('module "x" {\n  source = "../modules/none"\n}\n')
    with pytest.raises(RunbookError, match="is missing: iam/terraform/environment-specific/modules/none"):
        fp(root, shared, top=tmp_path / "checkout")


def test_invalid_hcl_is_refused_with_file_and_line(checkout, tmp_path):
    root, shared = checkout
    (root / "broken.tf").write_text('module "x" {\n  source = = "../x"\n}\n')
    with pytest.raises(RunbookError, match="broken.tf is not valid HCL") as caught:
        fp(root, shared, top=tmp_path / "checkout")
    assert "line 2" in str(caught.value)


def test_json_configuration_module_source_is_followed(modular):
    top, root, shared = modular
    (root / "extra.tf.json").write_text('{"module": {"more": {"source": "../../modules/json-only"}}}\n')
    module = top / "iam" / "terraform" / "modules" / "json-only"
    module.mkdir()
    (module / "main.tf").write_text("# v1\n")
    before = fp(root, shared, top=top)
    (module / "main.tf").write_text("# v2\n")
    assert fp(root, shared, top=top) != before


def test_root_outside_the_top_is_refused(checkout, tmp_path):
    root, shared = checkout
    with pytest.raises(RunbookError, match="lies outside the repository") as caught:
        fp(root, shared, top=tmp_path / "elsewhere")
    assert "terraform.roots" in str(caught.value)


def test_cr_in_a_deploy_script_is_a_finding_with_the_fix(checkout, tmp_path):
    root, shared = checkout
    top = tmp_path / "checkout"
    fingerprint.check_line_endings(shared, top=top)  # LF: no finding
    shared["deploy-app.sh"].write_bytes(SCRIPT.replace("\n", "\r\n").encode())
    with pytest.raises(RunbookError, match="CR \\(Windows\\) line endings") as caught:
        fingerprint.check_line_endings(shared, top=top)
    message = str(caught.value)
    assert "git config core.autocrlf input && rm -f iam/terraform/shared/deploy-app.sh && " \
           "git checkout -- iam/terraform/shared/deploy-app.sh" in message


def test_template_that_reads_a_file_itself_is_refused(modular):
    top, root, shared = modular
    template = top / "iam" / "terraform" / "modules" / "lambda-roles" / "trust.json.tpl"
    template.write_text('${file("../../secret.json")}\n')
    with pytest.raises(RunbookError, match="calls file\\(\\) itself"):
        fp(root, shared, top=top)
