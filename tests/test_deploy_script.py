"""iam/terraform/bin/deploy-app.sh and its two entry points, as the runbook runs them in a snapshot and as an
administrator runs them by hand in the working tree (the documented commands).

Fast tests run the scripts with a stand-in Terraform (TERRAFORM_BIN) that records its
arguments; the end-to-end tests run the pinned Terraform 1.0.x against a moto S3 backend
with the provider-free fixture roots in tests/fixtures/roots/. Only the story whose outcome the
version changes (the backend arguments of ``init``: 1.6 and later take an ``endpoints`` block) is
marked ``terraform`` and so runs on 1.11.4 too (tests/conftest.py); the others run once, on 1.0.x.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.project import Project, base_config, git
from tests.runs import default_signals

IAM = Path("iam/terraform")
SHARED = IAM / "bin/deploy-app.sh"
ACCOUNT_ENTRY = IAM / "account-specific/bin/deploy-app.sh"
ENV_ENTRY = IAM / "environment-specific/bin/deploy-app.sh"
REQUIRED = ("TF_STATE_BUCKET", "TF_STATE_KEY", "TF_LOCK_TABLE", "AWS_REGION")
ENV_KEY = "acme-api/iam/env/stg.tfstate"
ACCOUNT_KEY = "acme-api/iam/account.tfstate"
PLAN_FILE = ".terraform/runbook.tfplan"

# Stand-in for terraform: appends one line per call (arguments separated by tabs) to
# $FAKE_TF_LOG, writes the -out= plan file on plan and a JSON document on show -json; with
# $FAKE_TF_WHERE, also notes there the folder it runs in and TF_VAR_environment.
FAKE_TERRAFORM = r"""#!/usr/bin/env bash
set -euo pipefail
(IFS=$'\t'; printf '%s\n' "$*") >>"$FAKE_TF_LOG"
if [[ -n "${FAKE_TF_WHERE:-}" ]]; then
    printf '%s\t%s\n' "$PWD" "${TF_VAR_environment:-}" >>"$FAKE_TF_WHERE"
fi
if [[ "$1" == "${FAKE_TF_BLOCK_ON:-}" ]]; then
    # Like Terraform: stop gracefully on the first SIGINT, exit 1.
    trap 'kill "$sleeper"; echo interrupted >>"$FAKE_TF_LOG"; exit 1' INT
    sleep 30 </dev/null >/dev/null 2>&1 &
    sleeper=$!
    echo blocking >>"$FAKE_TF_LOG"
    wait
fi
if [[ "$1" == "${FAKE_TF_LOCKED_ON:-}" ]]; then
    # What Terraform prints (on stderr) when another run holds the state lock.
    printf '%s\n' "Error: Error acquiring the state lock" "" "Lock Info:" "  ID:        1234-abcd" \
        "  Who:       alice@laptop" >&2
    exit 1
fi
if [[ "$1" == "${FAKE_TF_STALE_ON:-}" ]]; then
    # What Terraform prints when the state changed after the saved plan was made.
    printf '%s\n' "Error: Saved plan is stale" "" "The given plan file can no longer be applied because the state" \
        "was changed by another operation after the plan was created." >&2
    exit 1
fi
case "$1" in
    init) mkdir -p .terraform ;;
    plan) for arg in "$@"; do [[ "$arg" == -out=* ]] && printf 'plan' >"${arg#-out=}"; done ;;
    show) printf '{"format_version":"0.2"}\n' ;;
    version) printf '{\n  "terraform_version": "%s",\n  "platform": "linux_amd64"\n}\n' "${FAKE_TF_VERSION:-1.0.3}" ;;
esac
exit "${FAKE_TF_EXIT:-0}"
"""


def run(script: Path, *args: str, cwd: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def root(tmp_path: Path, repo_root: Path) -> Path:
    """A copy of the provider-free environment fixture root."""
    target = tmp_path / "root"
    shutil.copytree(repo_root / "tests/fixtures/roots/environment", target)
    return target


@pytest.fixture
def fake_tf(tmp_path: Path, aws_env: dict[str, str]) -> dict[str, str]:
    """aws_env plus a recording stand-in Terraform and the four required variables."""
    tool = tmp_path / "fake-terraform"
    tool.write_text(FAKE_TERRAFORM)
    tool.chmod(0o755)
    return {
        **aws_env,
        "TERRAFORM_BIN": str(tool),
        "FAKE_TF_LOG": str(tmp_path / "terraform-calls.log"),
        "TF_STATE_BUCKET": "acme-api-tfstate-123456789012",
        "TF_STATE_KEY": ENV_KEY,
        "TF_LOCK_TABLE": "acme-api-tf-locks",
        "AWS_REGION": "eu-west-1",
    }


def tf_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["FAKE_TF_LOG"])
    if not log.exists():
        return []
    return [line.split("\t") for line in log.read_text().splitlines()]


# --- static ---------------------------------------------------------------------------------


def shell_scripts(repo_root: Path) -> list[Path]:
    return sorted(
        path
        for path in (repo_root / "iam").rglob("*")
        if path.is_file() and (path.suffix == ".sh" or path.read_bytes().startswith(b"#!"))
    )


def test_every_script_under_iam_is_shellcheck_clean(repo_root: Path, shellcheck_bin: Path):
    scripts = shell_scripts(repo_root)
    assert {repo_root / SHARED, repo_root / ACCOUNT_ENTRY, repo_root / ENV_ENTRY} <= set(scripts)
    result = subprocess.run(
        [str(shellcheck_bin), "--severity=style", "--external-sources", *map(str, scripts)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable_on_disk_and_in_git(repo_root: Path):
    scripts = shell_scripts(repo_root)
    for script in scripts:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    listed = subprocess.run(
        ["git", "ls-files", "-s", "--", *map(str, scripts)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listed.splitlines():
        mode, _, _, path = line.split(maxsplit=3)
        assert mode == "100755", f"{path} is tracked without the executable bit (git update-index --chmod=+x)"


def test_shared_script_documents_its_contract(repo_root: Path):
    header = (repo_root / SHARED).read_text().split("set -euo pipefail")[0]
    for name in (*REQUIRED, "AWS_ENDPOINT_URL", "DEPLOY_MODE", "TF_PLAN_FILE", "TERRAFORM_BIN", "TF_VAR_"):
        assert name in header, f"{name} is not documented at the top of {SHARED}"
    assert "eval" not in (repo_root / SHARED).read_text().replace("evaluat", "")


# --- preconditions (no real Terraform) -----------------------------------------------------


def test_all_missing_variables_are_named_at_once(repo_root: Path, root: Path, fake_tf: dict[str, str]):
    env = {k: v for k, v in fake_tf.items() if k not in REQUIRED}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 2
    for name in REQUIRED:
        assert f"missing environment variable {name}" in result.stderr
    assert "inv iam.env --name stg" in result.stderr
    assert tf_calls(fake_tf) == []


def test_one_missing_variable_is_named_alone(repo_root: Path, root: Path, fake_tf: dict[str, str]):
    env = {k: v for k, v in fake_tf.items() if k != "TF_LOCK_TABLE"}
    result = run(repo_root / ACCOUNT_ENTRY, cwd=root, env=env)
    assert result.returncode == 2
    assert "TF_LOCK_TABLE" in result.stderr and "DynamoDB" in result.stderr
    assert "export TF_LOCK_TABLE=" in result.stderr and "inv iam.account" in result.stderr
    assert "TF_STATE_BUCKET" not in result.stderr
    assert tf_calls(fake_tf) == []


@pytest.mark.parametrize(
    "name", ["stg;rm -rf /", "$(touch {canary})", "`touch {canary}`", "Stg", "../prod", "-stg", "", "stg prod"]
)
def test_entry_point_refuses_unsafe_environment_names(
    repo_root: Path, root: Path, fake_tf: dict[str, str], tmp_path: Path, name: str
):
    canary = tmp_path / "canary"
    result = run(repo_root / ENV_ENTRY, name.format(canary=canary), cwd=root, env=fake_tf)
    assert result.returncode == 2
    assert "invalid environment name" in result.stderr
    assert "^[a-z][a-z0-9-]*$" in result.stderr
    assert not canary.exists()
    assert tf_calls(fake_tf) == []


@pytest.mark.parametrize("args", [(), ("stg", "prod")])
def test_entry_point_needs_exactly_one_environment(repo_root: Path, root: Path, fake_tf, args):
    result = run(repo_root / ENV_ENTRY, *args, cwd=root, env=fake_tf)
    assert result.returncode == 2
    assert "Usage:" in result.stderr and "deploy-app.sh ENV" in result.stderr
    assert tf_calls(fake_tf) == []


def test_unknown_mode_lists_the_valid_ones(repo_root: Path, root: Path, fake_tf: dict[str, str]):
    result = run(repo_root / SHARED, cwd=root, env={**fake_tf, "DEPLOY_MODE": "destroy"})
    assert result.returncode == 2
    assert "unknown DEPLOY_MODE 'destroy'" in result.stderr
    assert "plan, apply, preview (plan without the state lock), or unset" in result.stderr
    assert tf_calls(fake_tf) == []


def test_preview_mode_plans_without_the_state_lock(repo_root: Path, root: Path, fake_tf: dict[str, str]):
    env = {**fake_tf, "DEPLOY_MODE": "preview", "TF_LOCK_TIMEOUT": "300s"}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    (plan,) = [call for call in tf_calls(fake_tf) if call[0] == "plan"]
    assert "-lock=false" in plan and not any(arg.startswith("-lock-timeout") for arg in plan)
    assert not any(call[0] == "apply" for call in tf_calls(fake_tf))


def test_missing_terraform_says_how_to_install(repo_root: Path, root: Path, fake_tf, tmp_path: Path):
    # A PATH with only what the scripts need besides terraform (the system may have another one).
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {k: v for k, v in fake_tf.items() if k != "TERRAFORM_BIN"}
    env["PATH"] = str(tools)
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 127
    assert "terraform not found" in result.stderr
    assert "pip install -r requirements-dev.txt" in result.stderr and "1.0.3" in result.stderr


def test_apply_without_a_plan_names_the_plan_command(repo_root: Path, root: Path, fake_tf: dict[str, str]):
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "apply"})
    assert result.returncode == 2
    assert f"no saved plan at {PLAN_FILE}" in result.stderr
    assert "DEPLOY_MODE=plan" in result.stderr and "../bin/deploy-app.sh stg" in result.stderr
    assert tf_calls(fake_tf) == []


def test_outside_a_root_module_is_refused(repo_root: Path, tmp_path: Path, fake_tf: dict[str, str]):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(repo_root / ACCOUNT_ENTRY, cwd=empty, env={**fake_tf, "DEPLOY_MODE": "plan"})
    assert result.returncode == 2
    assert "no *.tf files" in result.stderr
    assert tf_calls(fake_tf) == []


# --- the Terraform commands (stand-in Terraform) -------------------------------------------


def test_plan_mode_runs_init_plan_show_with_the_backend_config(repo_root, root, fake_tf):
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan"})
    assert result.returncode == 0, result.stderr
    init, plan, show = tf_calls(fake_tf)
    assert init == [
        "init",
        "-input=false",
        "-reconfigure",
        "-backend-config=bucket=acme-api-tfstate-123456789012",
        f"-backend-config=key={ENV_KEY}",
        "-backend-config=region=eu-west-1",
        "-backend-config=dynamodb_table=acme-api-tf-locks",
        "-backend-config=encrypt=true",
    ]
    assert plan == ["plan", "-input=false", f"-out={PLAN_FILE}"]
    assert show == ["show", "-json", PLAN_FILE]
    assert json.loads((root / f"{PLAN_FILE}.json").read_text()) == {"format_version": "0.2"}


def test_local_endpoint_adds_the_terraform_1_0_backend_options(repo_root, root, fake_tf):
    endpoint = "http://127.0.0.1:1"
    env = {**fake_tf, "DEPLOY_MODE": "plan", "AWS_ENDPOINT_URL": endpoint, "TF_PLAN_FILE": "out/my.plan",
           "TERRAFORM_VERSION": "1.0.3"}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    init = tf_calls(fake_tf)[0]
    for option in ("endpoint", "dynamodb_endpoint", "sts_endpoint", "iam_endpoint"):
        assert f"-backend-config={option}={endpoint}" in init
    for flag in (
        "force_path_style",
        "skip_credentials_validation",
        "skip_metadata_api_check",
        "skip_region_validation",
    ):
        assert f"-backend-config={flag}=true" in init
    assert (root / "out/my.plan").exists() and (root / "out/my.plan.json").exists()


@pytest.mark.parametrize("given", ["1.11.4", None], ids=["TERRAFORM_VERSION", "asked"])
def test_local_endpoint_gives_terraform_1_6_and_later_the_endpoints_block(repo_root, root, fake_tf, given):
    endpoint = "http://127.0.0.1:1"
    env = {**fake_tf, "DEPLOY_MODE": "plan", "AWS_ENDPOINT_URL": endpoint}
    env.update({"TERRAFORM_VERSION": given} if given else {"FAKE_TF_VERSION": "1.6.0"})
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    init = next(call for call in tf_calls(fake_tf) if call[0] == "init")
    url = f'"{endpoint}"'
    assert f"-backend-config=endpoints={{s3={url},sts={url},iam={url},dynamodb={url}}}" in init
    assert "-backend-config=use_path_style=true" in init
    assert not [arg for arg in init if arg.split("=")[0].endswith(("endpoint", "force_path_style"))], init


def test_s3_lock_mode_uses_a_lock_file_and_needs_no_table(repo_root, root, fake_tf):
    env = {k: v for k, v in fake_tf.items() if k != "TF_LOCK_TABLE"}
    env.update({"DEPLOY_MODE": "plan", "TF_LOCK_MODE": "s3", "FAKE_TF_VERSION": "1.11.4"})
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    init = next(call for call in tf_calls(fake_tf) if call[0] == "init")
    assert "-backend-config=use_lockfile=true" in init
    assert not [arg for arg in init if "dynamodb" in arg], init
    assert f"lock file s3://acme-api-tfstate-123456789012/{ENV_KEY}.tflock" in result.stderr


def test_s3_lock_mode_refuses_terraform_before_1_10_before_init(repo_root, root, fake_tf):
    env = {**fake_tf, "DEPLOY_MODE": "plan", "TF_LOCK_MODE": "s3", "FAKE_TF_VERSION": "1.9.8"}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 2
    assert "needs Terraform 1.10 or later" in result.stderr and "1.9.8" in result.stderr
    assert [call[0] for call in tf_calls(fake_tf)] == ["version"], "nothing but `terraform version` may run"


def test_migration_lock_mode_takes_both_locks(repo_root, root, fake_tf):
    env = {**fake_tf, "DEPLOY_MODE": "plan", "TF_LOCK_MODE": "dynamodb+s3", "TERRAFORM_VERSION": "1.11.4"}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    init = next(call for call in tf_calls(fake_tf) if call[0] == "init")
    assert "-backend-config=use_lockfile=true" in init
    assert "-backend-config=dynamodb_table=acme-api-tf-locks" in init


def test_apply_mode_applies_exactly_the_saved_plan(repo_root, root, fake_tf):
    assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan"}).returncode == 0
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "apply"})
    assert result.returncode == 0, result.stderr
    assert tf_calls(fake_tf)[3:] == [["apply", "-input=false", PLAN_FILE]], "apply re-initialised or re-planned"


def test_manual_run_confirmed_plans_then_applies_that_plan(repo_root, root, fake_tf):
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=fake_tf, stdin="y\n")
    assert result.returncode == 0, result.stderr
    assert [call[0] for call in tf_calls(fake_tf)] == ["init", "plan", "show", "apply"]
    assert tf_calls(fake_tf)[-1] == ["apply", "-input=false", PLAN_FILE]


def test_one_sigint_to_the_group_stops_after_terraform_exits(repo_root, root, fake_tf):
    """The runner forwards Ctrl-C as one SIGINT to the script's process group."""
    env = {**fake_tf, "FAKE_TF_BLOCK_ON": "plan"}
    proc = subprocess.Popen(
        [str(repo_root / ENV_ENTRY), "stg"],
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_signals,  # SIGINT at its default, as at a terminal, even in a background job
    )
    deadline = time.monotonic() + 10
    while [c[0] for c in tf_calls(fake_tf)] != ["init", "plan", "blocking"] and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate("y\n", timeout=10)
    assert proc.returncode != 0
    assert "terraform plan failed" in stderr
    assert [c[0] for c in tf_calls(fake_tf)] == ["init", "plan", "blocking", "interrupted"], "went on"
    assert not (root / PLAN_FILE).exists()


def test_plan_files_are_private_and_the_apply_deletes_them(repo_root, root, fake_tf):
    assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan"}).returncode == 0
    for name in (PLAN_FILE, PLAN_FILE + ".json"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, f"{name} is readable by others"
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "apply"})
    assert result.returncode == 0, result.stderr
    assert not (root / PLAN_FILE).exists() and not (root / (PLAN_FILE + ".json")).exists()


@pytest.mark.parametrize("step", ["plan", "apply"])
def test_a_state_lock_held_elsewhere_exits_75_and_is_not_a_partial_apply(repo_root, root, fake_tf, step):
    if step == "apply":
        assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan"}).returncode == 0
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": step,
                                                             "FAKE_TF_LOCKED_ON": step})
    assert result.returncode == 75, result.stderr
    assert "Error acquiring the state lock" in result.stderr  # Terraform's own message still reaches the user
    assert "nothing was applied" in result.stderr
    assert "partly updated" not in result.stderr
    assert "inv iam.unlock --env stg --lock-id ID" in result.stderr


def test_a_stale_saved_plan_is_said_to_have_applied_nothing(repo_root, root, fake_tf):
    assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan"}).returncode == 0
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**fake_tf, "DEPLOY_MODE": "apply",
                                                             "FAKE_TF_STALE_ON": "apply"})
    assert result.returncode == 1, result.stderr
    assert "refused the saved plan: the state changed after it was made" in result.stderr
    assert "nothing was applied. Plan again: inv iam.env --name stg." in result.stderr
    assert "partly updated" not in result.stderr


def test_terraform_failure_status_passes_through(repo_root, root, fake_tf):
    result = run(repo_root / SHARED, cwd=root, env={**fake_tf, "DEPLOY_MODE": "plan", "FAKE_TF_EXIT": "3"})
    assert result.returncode == 3
    assert "terraform init failed (exit 3)" in result.stderr


def test_secrets_are_not_printed(repo_root, root, fake_tf):
    secret = "wJalrXUtnFEMI-very-secret-value"
    env = {**fake_tf, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": secret}
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env=env, stdin="y\n")
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr


# --- the documented manual commands, in a working tree (stand-in Terraform) -------------------


@pytest.mark.parametrize(("folder", "arg", "scope", "environment"), [
    ("account-specific", "", "account", ""), ("environment-specific", " stg", "environment", "stg")],
    ids=["account", "environment"])
def test_the_documented_manual_commands_work_in_the_working_tree(repo_root, tmp_path, fake_tf, folder, arg, scope,
                                                                 environment):
    """`inv` plans and applies in a snapshot; by hand, the documented commands run in the checkout itself."""
    project = Project.create(tmp_path, fake_tf, base_config(None))
    line = f"(cd iam/terraform/{folder}/main && ../bin/deploy-app.sh{arg})"
    assert line in (repo_root / SHARED).read_text(), "the command deploy-app.sh documents"
    where = tmp_path / "terraform-where.log"
    result = subprocess.run(["bash", "-c", line], cwd=project.path, env={**fake_tf, "FAKE_TF_WHERE": str(where)},
                            input="y\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    main = project.path / "iam/terraform" / folder / "main"
    assert f"root module: {main} (scope: {scope})" in result.stderr
    assert [call[0] for call in tf_calls(fake_tf)] == ["init", "plan", "show", "apply"]
    assert tf_calls(fake_tf)[-1] == ["apply", "-input=false", PLAN_FILE]
    assert set(where.read_text().splitlines()) == {f"{main}\t{environment}"}, "Terraform ran elsewhere"
    assert not (main / PLAN_FILE).exists(), "the applied plan was left behind"
    assert git(project.path, "status", "--porcelain") == "", "the manual run left files git sees"


# --- end to end: Terraform 1.0.x against moto ----------------------------------------------


@pytest.fixture
def e2e_env(aws_env: dict[str, str], tf_backend, terraform_bin: Path) -> dict[str, str]:
    # the account root's ci_deployer has no default (a manual apply without it must stop); the
    # environment root does not declare it, and Terraform ignores TF_VAR_ of undeclared variables
    return {**aws_env, "TERRAFORM_BIN": str(terraform_bin), "TF_VAR_ci_deployer": "user"}


def copy_root(repo_root: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(repo_root / "tests/fixtures/roots" / name, target)
    return target


@pytest.mark.terraform  # the backend arguments of init differ by version: run on 1.0.3 and 1.11.4
def test_environment_plan_then_apply_writes_state_and_uses_the_lock(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "environment")
    env = {**e2e_env, **tf_backend.env(ENV_KEY)}

    planned = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**env, "DEPLOY_MODE": "plan"})
    assert planned.returncode == 0, planned.stdout + planned.stderr
    plan_json = json.loads((root / f"{PLAN_FILE}.json").read_text())
    assert plan_json["planned_values"]["outputs"]["lambda_role_names"]["value"] == [
        "acme-api-stg-lambda-api",
        "acme-api-stg-lambda-worker",
    ]
    assert tf_backend.state(ENV_KEY) is None, "plan must not write state"

    applied = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**env, "DEPLOY_MODE": "apply"})
    assert applied.returncode == 0, applied.stdout + applied.stderr
    state = tf_backend.state(ENV_KEY)
    assert state is not None, f"no state object at s3://{tf_backend.bucket}/{ENV_KEY}"
    assert state["outputs"]["lambda_role_names"]["value"] == [
        "acme-api-stg-lambda-api",
        "acme-api-stg-lambda-worker",
    ]
    locks = tf_backend.lock_items()
    assert f"{tf_backend.bucket}/{ENV_KEY}-md5" in locks, "Terraform did not use the lock table"
    assert f"{tf_backend.bucket}/{ENV_KEY}" not in locks, "the state lock was left held"


def test_account_root_through_the_shared_script(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "account")
    env = {**e2e_env, **tf_backend.env(ACCOUNT_KEY), "TF_VAR_project": "acme-api"}
    for mode in ("plan", "apply"):
        result = run(repo_root / SHARED, cwd=root, env={**env, "DEPLOY_MODE": mode})
        assert result.returncode == 0, f"{mode}: {result.stdout}{result.stderr}"
    state = tf_backend.state(ACCOUNT_KEY)
    assert state["outputs"]["deployer_user_name"]["value"] == "acme-api-circleci-deployer"


def test_apply_uses_the_reviewed_plan_not_the_current_inputs(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "account")
    env = {**e2e_env, **tf_backend.env(ACCOUNT_KEY)}
    planned = run(repo_root / ACCOUNT_ENTRY, cwd=root, env={**env, "DEPLOY_MODE": "plan", "TF_VAR_project": "acme-api"})
    assert planned.returncode == 0, planned.stdout + planned.stderr
    changed = {**env, "DEPLOY_MODE": "apply", "TF_VAR_project": "changed-after-review"}
    applied = run(repo_root / ACCOUNT_ENTRY, cwd=root, env=changed)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert tf_backend.state(ACCOUNT_KEY)["outputs"]["deployer_user_name"]["value"] == "acme-api-circleci-deployer"


def test_apply_initialises_first_when_dot_terraform_is_gone(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "account")
    env = {**e2e_env, **tf_backend.env(ACCOUNT_KEY), "TF_PLAN_FILE": "plans/account.tfplan"}
    assert run(repo_root / ACCOUNT_ENTRY, cwd=root, env={**env, "DEPLOY_MODE": "plan"}).returncode == 0
    shutil.rmtree(root / ".terraform")
    result = run(repo_root / ACCOUNT_ENTRY, cwd=root, env={**env, "DEPLOY_MODE": "apply"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "init -input=false -reconfigure" in result.stderr, "apply did not initialise first"
    assert tf_backend.state(ACCOUNT_KEY)["outputs"]["deployer_user_name"]["value"] == "acme-api-circleci-deployer"


def test_failing_plan_exits_non_zero_and_writes_nothing(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "failing-plan")
    result = run(repo_root / SHARED, cwd=root, env={**e2e_env, **tf_backend.env(ENV_KEY), "DEPLOY_MODE": "plan"})
    assert result.returncode != 0
    assert "terraform plan failed" in result.stderr
    assert not (root / PLAN_FILE).exists() and not (root / f"{PLAN_FILE}.json").exists()
    assert tf_backend.state(ENV_KEY) is None


def test_a_failed_plan_removes_the_previous_plan(repo_root, tmp_path, tf_backend, e2e_env):
    """After a failed plan, apply must not pick up the plan of an earlier run."""
    root = copy_root(repo_root, tmp_path, "environment")
    env = {**e2e_env, **tf_backend.env(ENV_KEY)}
    assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**env, "DEPLOY_MODE": "plan"}).returncode == 0
    assert (root / PLAN_FILE).exists()
    shutil.copy(repo_root / "tests/fixtures/roots/failing-plan/main.tf", root / "main.tf")
    assert run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**env, "DEPLOY_MODE": "plan"}).returncode != 0
    assert not (root / PLAN_FILE).exists()
    assert not (root / f"{PLAN_FILE}.json").exists(), "a stale plan summary was left for the runner to read"
    applied = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**env, "DEPLOY_MODE": "apply"})
    assert applied.returncode == 2 and "no saved plan" in applied.stderr
    assert tf_backend.state(ENV_KEY) is None


def test_failing_apply_exits_non_zero(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "failing-apply")
    env = {**e2e_env, **tf_backend.env(ENV_KEY)}
    assert run(repo_root / SHARED, cwd=root, env={**env, "DEPLOY_MODE": "plan"}).returncode == 0
    result = run(repo_root / SHARED, cwd=root, env={**env, "DEPLOY_MODE": "apply"})
    assert result.returncode != 0
    assert "terraform apply failed" in result.stderr and "applied_at_number" in result.stdout + result.stderr
    state = tf_backend.state(ENV_KEY)
    assert state is None or "applied_at_number" not in state.get("outputs", {})


@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "end-of-input"])
def test_manual_run_declined_applies_nothing(repo_root, tmp_path, tf_backend, e2e_env, answer):
    root = copy_root(repo_root, tmp_path, "environment")
    result = run(repo_root / ENV_ENTRY, "stg", cwd=root, env={**e2e_env, **tf_backend.env(ENV_KEY)}, stdin=answer)
    assert result.returncode == 1
    assert "Apply this plan? [y/N]" in result.stderr and "not applied" in result.stderr
    assert tf_backend.state(ENV_KEY) is None


def test_manual_run_confirmed_applies_the_plan(repo_root, tmp_path, tf_backend, e2e_env):
    root = copy_root(repo_root, tmp_path, "environment")
    env = {k: v for k, v in {**e2e_env, **tf_backend.env(ENV_KEY)}.items() if k != "TF_IN_AUTOMATION"}
    result = run(repo_root / ENV_ENTRY, "prod", cwd=root, env=env, stdin="yes\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tf_backend.state(ENV_KEY)["outputs"]["lambda_role_names"]["value"][0] == "acme-api-prod-lambda-api"


def test_no_generated_terraform_files_in_the_repository(repo_root: Path):
    tracked = subprocess.run(
        ["git", "ls-files", "--", "iam", "tests/fixtures"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout.split()
    generated = [p for p in tracked if ".terraform/" in p or p.endswith((".tfplan", ".tfstate", ".tfplan.json"))]
    assert generated == []
