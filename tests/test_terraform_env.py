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
