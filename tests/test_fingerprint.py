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


def fp(root, shared, inputs=INPUTS):
    return fingerprint.compute(root, shared, inputs)


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
    target = tmp_path / "linked-module"
    target.mkdir()
    (target / "main.tf").write_text("# v1\n")
    (root / "linked").symlink_to(target, target_is_directory=True)
    before = fp(root, shared)
    assert "linked/main.tf" in fingerprint.root_files(root)
    (target / "main.tf").write_text("# v2\n")
    assert fp(root, shared) != before


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
