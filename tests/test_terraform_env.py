"""Terraform gets the configuration's inputs, arguments and endpoints, never the shell's."""

from __future__ import annotations

import json

import pytest

from tests.project import Project, base_config

pytestmark = pytest.mark.terraform


@pytest.fixture
def project(tmp_path, moto_reset, aws_env) -> Project:
    return Project.create(tmp_path, aws_env, base_config(moto_reset))


def test_the_shells_terraform_arguments_and_variables_do_not_reach_the_apply(project, moto_reset, aws_credentials):
    import boto3

    shell = {**project.env,
             "TF_CLI_ARGS_plan": "-var=project=evil -var=environment=prod",
             "TF_VAR_environment": "prod", "TF_VAR_project": "evil",
             "TF_DATA_DIR": str(project.path / "elsewhere"),
             "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_S3_ENDPOINT": "http://127.0.0.1:9"}
    result = project.inv("iam.env", "--name", "stg", env=shell)
    assert result.code == 0, result.all
    ssm = boto3.client("ssm", endpoint_url=moto_reset, region_name="eu-west-1")
    record = json.loads(ssm.get_parameter(Name="/acme-api/iam/env/stg")["Parameter"]["Value"])
    roles = record["outputs"]["lambda_role_names"]
    assert roles and all(name.startswith("acme-api-stg-") for name in roles), roles
    assert not (project.path / "elsewhere").exists()


def test_a_configuration_outside_the_commit_is_refused_for_a_real_account(project, tmp_path, moto_reset):
    import yaml

    config = yaml.safe_load((project.path / "config" / "environments.yml").read_text())
    config["terraform"]["roots"]["environment"] = "roots/account"  # applied as stg's, never committed
    for account in config["accounts"].values():
        account.pop("endpoint_url")
    elsewhere = tmp_path / "mine.yml"
    elsewhere.write_text(yaml.safe_dump(config))
    result = project.inv("iam.env", "--name", "stg", env={**project.env, "RUNBOOK_CONFIG": str(elsewhere)})
    assert result.code == 1 and "Traceback" not in result.all
    assert "ERROR [config-not-committed]" in result.err and "unset RUNBOOK_CONFIG" in result.err
    assert "Terraform: plan" not in result.out


def test_a_rehearsal_may_use_a_configuration_outside_the_commit(project, tmp_path):
    import shutil

    elsewhere = tmp_path / "rehearsal.yml"
    shutil.copy(project.path / "config" / "environments.yml", elsewhere)  # every account has endpoint_url
    result = project.inv("iam.env", "--name", "stg", env={**project.env, "RUNBOOK_CONFIG": str(elsewhere)})
    assert result.code == 0, result.all
    assert "allowed for a rehearsal" in result.out
