"""The CI deployer without long-lived keys: the pipeline's credentials step and the configuration switch.

``.circleci/aws-credentials.sh ENV`` is run as a CircleCI step runs it (a fake
``CIRCLE_OIDC_TOKEN_V2``, ``AWS_ROLE_ARN`` from the context, ``$BASH_ENV``). The role chain that
follows (a later step reaching AWS as the deployer role the account root applied, with moto
enforcing its policy) is the story of tests/test_shipped_roots.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from runbook import config as configuration
from runbook.errors import RunbookError
from runbook.scopes import Scope
from tests.test_iam_modules import (
    OIDC_INPUTS,
    v2_subject,
)

SCRIPT = Path(__file__).resolve().parents[1] / ".circleci" / "aws-credentials.sh"
NONPROD = "123456789012"
ROLE_ARN = f"arn:aws:iam::{NONPROD}:role/acme-api/ci/acme-api-circleci-deployer"


def fake_token(branch: str = "staging") -> str:
    """An unsigned JWT shaped like CIRCLE_OIDC_TOKEN_V2 (moto does not verify tokens)."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    org = OIDC_INPUTS["circleci_org_id"]
    claims = {"iss": f"https://oidc.circleci.com/org/{org}", "aud": org, "sub": v2_subject(branch),
              "oidc.circleci.com/project-id": OIDC_INPUTS["circleci_project_id"]}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture
def job_env(aws_env: dict, tmp_path: Path) -> dict:
    """A CircleCI job's environment with the context of a migrated account: a token, a role, no key."""
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), BASH_ENV=str(tmp_path / "bash_env"), CIRCLE_JOB="deploy-stg", CIRCLE_BUILD_NUM="42",
               CIRCLE_OIDC_TOKEN_V2=fake_token(), AWS_ROLE_ARN=ROLE_ARN)
    Path(env["BASH_ENV"]).write_text("")
    return env


def run_step(env: dict, name: str = "stg") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), name], env=env, capture_output=True, text=True, timeout=60,
                          cwd=SCRIPT.parents[1])


def exported(env: dict) -> dict:
    """What the step left in $BASH_ENV for the job's later steps, as a fresh shell sees it."""
    done = subprocess.run(["bash", "-c", 'set -a; . "$BASH_ENV"; env -0'], env=env, capture_output=True, check=True)
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith("AWS_")}


# --- the pipeline step --------------------------------------------------------------------------


def test_oidc_step_writes_the_token_file_and_the_web_identity_variables(job_env: dict, tmp_path: Path):
    done = run_step(job_env)
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / "home" / ".aws-oidc" / "token"
    later_step = exported(job_env)
    assert later_step["AWS_ROLE_ARN"] == ROLE_ARN
    assert later_step["AWS_WEB_IDENTITY_TOKEN_FILE"] == str(token_file)
    assert later_step["AWS_ROLE_SESSION_NAME"] == "circleci-deploy-stg-42"
    assert "AWS_ACCESS_KEY_ID" not in later_step
    assert token_file.read_text() == job_env["CIRCLE_OIDC_TOKEN_V2"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert f"web identity (CircleCI OIDC) as {ROLE_ARN}" in done.stderr
    assert job_env["CIRCLE_OIDC_TOKEN_V2"] not in done.stdout + done.stderr + Path(job_env["BASH_ENV"]).read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}, "still holds AWS_ACCESS_KEY_ID"),
        ({"CIRCLE_OIDC_TOKEN_V2": None}, "is missing from this job, and this executor has no circleci CLI to mint one. "
                                         "CircleCI leaves the variable out now and then (intermittent): rerun the job"),
        ({"AWS_ROLE_ARN": None}, "terraform output -raw deployer_role_arn"),
        ({"AWS_ROLE_ARN": "acme-api-circleci-deployer"}, "is not an IAM role ARN"),
        ({"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/acme-api/ci/x\nexport EVIL=1"}, "is not an IAM role ARN"),
    ],
    ids=["key-left-in-context", "no-token", "no-role", "not-an-arn", "newline-in-arn"],
)
def test_oidc_step_refuses_what_would_not_be_the_role(change: dict, expected: str, job_env: dict, tmp_path: Path):
    env = {k: v for k, v in {**job_env, **change}.items() if v is not None}
    done = run_step(env)
    assert done.returncode == 2, done.stderr
    assert expected in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert Path(env["BASH_ENV"]).read_text() == "", "nothing exported for the next steps"
    assert not (tmp_path / "home" / ".aws-oidc").exists()


def fake_circleci_cli(tmp_path: Path, answers: list[str]) -> Path:
    """A ``circleci`` on PATH that notes its arguments and answers ``run oidc get`` with the next of *answers*
    ("" fails with exit 1, as the CLI does when CircleCI's token service does not answer; "HANG" never answers)."""
    folder = tmp_path / "cli"
    folder.mkdir()
    (folder / "answers").write_text("\n".join(answers) + "\n")
    script = folder / "circleci"
    script.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {folder}/calls
answer="$(head -n 1 {folder}/answers)"; sed -i 1d {folder}/answers
[[ "$answer" != HANG ]] || exec sleep 300
[[ -n "$answer" ]] || {{ echo "Error: failed to get OIDC token" >&2; exit 1; }}
printf '%s' "$answer"
""")
    script.chmod(0o755)
    return folder


@pytest.mark.parametrize("answers", [["", "", ""], ["", "MINTED"], ["Error: unauthorized"] * 3],
                         ids=["never", "second-try", "not-a-token"])
def test_a_missing_token_is_minted_with_the_circleci_cli_a_few_times(answers, job_env: dict, tmp_path: Path):
    minted = fake_token("staging")
    cli = fake_circleci_cli(tmp_path, [minted if a == "MINTED" else a for a in answers])
    env = {k: v for k, v in job_env.items() if k != "CIRCLE_OIDC_TOKEN_V2"}
    env["PATH"] = f"{cli}{os.pathsep}{env['PATH']}"
    done = run_step(env)
    org = yaml.safe_load(Path(SCRIPT.parents[1] / "config" / "environments.yml").read_text())["circleci"]["org_id"]
    calls = (cli / "calls").read_text().splitlines()
    assert set(calls) == {f'run oidc get --claims {{"aud":"{org}"}}'}
    text = " ".join(done.stderr.split())
    if "MINTED" in answers:
        assert done.returncode == 0, done.stderr
        assert len(calls) == 2 and "minted a token with circleci run oidc get (try 2)" in text
        assert (tmp_path / "home" / ".aws-oidc" / "token").read_text() == minted
        assert minted not in done.stderr
    else:
        assert done.returncode == 2 and len(calls) == 3
        assert "did not mint one in 3 tries" in text and "CircleCI leaves the variable out now and then " \
               "(intermittent): rerun the job (inv ci.rerun --env stg)" in text
        assert Path(env["BASH_ENV"]).read_text() == ""


def test_a_circleci_cli_that_hangs_is_given_up_on_after_each_tries_limit(job_env: dict, tmp_path: Path):
    cli = fake_circleci_cli(tmp_path, ["HANG"] * 3)
    shim = cli / "timeout"  # the script gives each try `timeout 20`: noted, and shortened to 1 s here
    shim.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {cli}/limits
shift
exec {shutil.which("timeout")} 1 "$@"
""")
    shim.chmod(0o755)
    env = {k: v for k, v in job_env.items() if k != "CIRCLE_OIDC_TOKEN_V2"}
    env["PATH"] = f"{cli}{os.pathsep}{env['PATH']}"
    started = time.monotonic()
    done = run_step(env)
    assert done.returncode == 2 and "did not mint one in 3 tries" in " ".join(done.stderr.split()), done.stderr
    assert [line.split()[:4] for line in (cli / "limits").read_text().splitlines()] == [
        ["20", "circleci", "run", "oidc"]] * 3
    assert time.monotonic() - started < 60  # three 1 s tries and two 2 s pauses, not three hangs


def test_oidc_step_refuses_a_role_of_another_account(job_env: dict):
    done = run_step(job_env, "prod")
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert f"is a role of account {NONPROD}, but environment prod deploys into account prod (210987654321)" in text


def test_step_for_an_unknown_environment_says_so(job_env: dict):
    done = run_step(job_env, "stag")
    assert done.returncode == 2
    assert "There is no environment 'stag'" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def legacy_config(tmp_path: Path, repo_root: Path) -> Path:
    data = yaml.safe_load((repo_root / "config" / "environments.yml").read_text())
    data["circleci"] = {"project_slug": "gh/acme/acme-api", "workflow": "build-test-deploy", "deployer": "user"}
    path = tmp_path / "legacy.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_legacy_user_step_needs_the_key_and_exports_nothing(job_env: dict, legacy_config: Path):
    env = {**job_env, "RUNBOOK_CONFIG": str(legacy_config)}
    del env["AWS_ROLE_ARN"], env["CIRCLE_OIDC_TOKEN_V2"]
    done = run_step(env)
    assert done.returncode == 2 and "lacks AWS_ACCESS_KEY_ID" in done.stderr
    done = run_step({**env, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-value"})
    assert done.returncode == 0, done.stderr
    assert "legacy deployer user" in done.stderr and "secret-value" not in done.stderr
    assert Path(env["BASH_ENV"]).read_text() == ""


# --- the configuration switch -----------------------------------------------------------------


def _config(tmp_path: Path, repo_root: Path, **circleci) -> Path:
    data = yaml.safe_load((repo_root / "config" / "environments.yml").read_text())
    data["circleci"] = {"project_slug": "gh/acme/acme-api", "workflow": "build-test-deploy", **circleci}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_account_scope_passes_the_deployer_inputs_with_the_accounts_branches():
    cfg = configuration.load()
    nonprod, prod = (Scope.of_account(cfg, cfg.accounts[name]).tf_vars() for name in ("nonprod", "prod"))
    assert nonprod["ci_deployer"] == prod["ci_deployer"] == "oidc"
    assert json.loads(nonprod["deploy_branches"]) == ["develop", "staging", "test"]
    assert json.loads(prod["deploy_branches"]) == ["prod"], "the prod role trusts the prod branch only"
    assert nonprod["circleci_vcs_origin"] == "github.com/acme/acme-api"
    assert nonprod["circleci_org_id"] == cfg.circleci.org_id
    assert nonprod["circleci_project_id"] == cfg.circleci.project_id
    env_vars = Scope.of_environment(cfg, cfg.environment("stg")).tf_vars()
    assert not {"ci_deployer", "deploy_branches"} & set(env_vars)


def test_without_the_switch_the_deployer_stays_the_legacy_user(tmp_path: Path, repo_root: Path):
    cfg = configuration.load(_config(tmp_path, repo_root))
    assert cfg.circleci.deployer == "user"
    variables = Scope.of_account(cfg, cfg.accounts["nonprod"]).tf_vars()
    assert variables == {"project": "acme-api", "account_id": NONPROD, "region": "eu-west-1", "ci_deployer": "user",
                         "state_bucket": f"acme-api-tfstate-{NONPROD}", "lock_table": "acme-api-tf-locks"}


@pytest.mark.parametrize(
    ("circleci", "expected"),
    [
        ({"deployer": "oidc", "project_id": "5e4d3c2b-1a09-4f8e-a7d6-c5b4a3928170"},
         "field circleci: the key 'org_id' is missing"),
        ({"deployer": "oidc", "org_id": "my-org", "project_id": "5e4d3c2b-1a09-4f8e-a7d6-c5b4a3928170"},
         "field circleci.org_id: 'my-org' is not a CircleCI organization"),
        ({"deployer": "keys"}, "field circleci.deployer: 'keys' is not one of ['oidc', 'user']"),
        ({"deployer": "oidc", "org_id": OIDC_INPUTS["circleci_org_id"],
          "project_id": OIDC_INPUTS["circleci_project_id"], "project_slug": "circleci/8a6b3c1e/5e4d3c2b"},
         "field circleci.vcs_origin"),
    ],
    ids=["no-org", "org-not-a-uuid", "unknown-mode", "vcs-origin-not-derivable"],
)
def test_configuration_refuses_an_oidc_deployer_it_cannot_pin(circleci: dict, expected: str, tmp_path, repo_root):
    with pytest.raises(RunbookError) as caught:
        configuration.load(_config(tmp_path, repo_root, **circleci))
    assert expected in caught.value.message


@pytest.mark.parametrize("project", ["acme--api", "acme-"])
def test_configuration_refuses_project_names_that_break_the_delimiter(project: str, tmp_path: Path, repo_root: Path):
    path = _config(tmp_path, repo_root)
    data = yaml.safe_load(path.read_text())
    data["project"] = project
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RunbookError) as caught:
        configuration.load(path)
    assert "field project" in caught.value.message


# --- the job's token refused: each cause named, the claims shown, never the token ------------------------------

STS_ERROR = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
             '<Code>{code}</Code><Message>{message}</Message></Error>'
             '<RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>')


@pytest.mark.parametrize(("status", "code", "message", "expected"), [
    (403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity",
     "ERROR [oidc-token-refused]: The deployer role " + ROLE_ARN + " refused this job's OIDC token (AccessDenied: "
     "Not authorized to perform sts:AssumeRoleWithWebIdentity): its trust admits only this project's deploy branches"),
    (400, "InvalidIdentityToken", "Incorrect token audience",
     "ERROR [oidc-token-refused]: AWS refused this job's OIDC token for its audience (InvalidIdentityToken: Incorrect "
     "token audience)"),
    (400, "ExpiredTokenException", "Token expired: current date/time 1796000000 must be before the expiration "
                                   "date/time 1795996400",
     "ERROR [oidc-token-expired]: This job's OIDC token has expired (ExpiredTokenException: Token expired"),
], ids=["trust-refuses", "audience", "expired"])
def test_the_gate_names_why_sts_refused_the_jobs_token(status, code, message, expected, project, job_env, tmp_path):
    from tests.aws_proxy import AwsProxy

    done = run_step(job_env)
    assert done.returncode == 0, done.stderr
    with AwsProxy(base_config_endpoint(project)) as proxy:
        body = STS_ERROR.format(code=code, message=message).encode()
        proxy.fail = lambda r: (status, "text/xml", body) if r.action == "AssumeRoleWithWebIdentity" else None
        env = {k: v for k, v in project.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env.update(exported(job_env), AWS_ENDPOINT_URL=proxy.url)
        gate = project.inv("ci.gate", "--env", "stg", "--timeout-s", "30", "--poll-s", "0.5", env=env)
    text = " ".join(gate.err.split())
    assert gate.code == 1, gate.all
    assert expected in text
    assert f"aud '{OIDC_INPUTS['circleci_org_id']}', sub '{v2_subject('staging')}'" in text  # the claims
    assert job_env["CIRCLE_OIDC_TOKEN_V2"] not in gate.all  # never the token
    assert "rerun the job (inv ci.rerun --env stg)" in text
    assert "grant ssm:GetParameter" not in text and "aws sso login" not in text and "Traceback" not in gate.all


def base_config_endpoint(project) -> str:
    """The moto endpoint the clone's accounts point at."""
    return yaml.safe_load((project.path / "config" / "environments.yml").read_text())["accounts"]["nonprod"][
        "endpoint_url"]
