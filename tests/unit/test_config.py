"""Configuration errors: each names the file, the line and the field, and says how to fix it."""

from __future__ import annotations

import textwrap

import pytest

from runbook import config
from runbook.errors import RunbookError

GOOD = """\
project: acme-api
accounts:
  nonprod:
    id: "012345678901"
    region: eu-west-1
environments:
  stg:
    branch: staging
    account: nonprod
  prod:
    branch: prod
    account: nonprod
    protected: true
circleci:
  project_slug: gh/acme/acme-api
  workflow: build-test-deploy
"""


def load(tmp_path, text: str):
    path = tmp_path / "environments.yml"
    path.write_text(textwrap.dedent(text))
    return config.load(path)


def error(tmp_path, text: str) -> str:
    with pytest.raises(RunbookError) as caught:
        load(tmp_path, text)
    message = caught.value.message
    assert "environments.yml" in message
    assert "Fix:" in message
    return message


def test_shipped_configuration_is_valid():
    cfg = config.load(config.DEFAULT_CONFIG)
    assert set(cfg.environments) == {"dev", "stg", "test", "prod"}
    assert cfg.environments["prod"].protected
    assert all(len(a.id) == 12 for a in cfg.accounts.values())


def test_good_configuration_keeps_the_leading_zero(tmp_path):
    cfg = load(tmp_path, GOOD)
    assert cfg.environments["stg"].account.id == "012345678901"
    assert cfg.backend("environment", cfg.accounts["nonprod"], "stg").key == "acme-api/iam/env/stg.tfstate"
    assert cfg.roots["account"] == "iam/terraform/account-specific/main"


def test_unquoted_account_id_that_yaml_turns_into_a_number(tmp_path):
    message = error(tmp_path, GOOD.replace('"012345678901"', "012345670123"))
    assert "line 4, field accounts.nonprod.id" in message and "must be quoted" in message


def test_the_check_command_of_the_fix_checks_the_file_that_was_given(tmp_path):
    with pytest.raises(RunbookError) as caught:
        load(tmp_path, GOOD.replace('"012345678901"', "012345670123"))
    assert caught.value.fix.endswith(f"`inv config.check --path {tmp_path / 'environments.yml'}`")


def test_unquoted_account_id_even_when_it_survives(tmp_path):
    message = error(tmp_path, GOOD.replace('"012345678901"', "012345678901"))
    assert "line 4, field accounts.nonprod.id: quote the account ID" in message


@pytest.mark.parametrize("bad", ['"12345678901"', '"1234567890123"', '"12345678901a"', "12345678901a"])
def test_account_id_must_have_twelve_digits(tmp_path, bad):
    message = error(tmp_path, GOOD.replace('"012345678901"', bad))
    assert "line 4, field accounts.nonprod.id" in message and "12-digit" in message


def test_duplicate_key(tmp_path):
    message = error(tmp_path, GOOD.replace("    branch: staging\n", "    branch: staging\n    branch: stage\n"))
    assert "line 9, field environments.stg.branch: duplicate key (first on line 8)" in message


def test_unknown_key_suggests_the_known_one(tmp_path):
    message = error(tmp_path, GOOD.replace("    protected: true", "    protcted: true"))
    assert "line 13, field environments.prod.protcted: unknown key; did you mean 'protected'?" in message


def test_environment_naming_an_unknown_account(tmp_path):
    message = error(tmp_path, GOOD.replace("    account: nonprod\n  prod:", "    account: nonprd\n  prod:"))
    assert "line 9, field environments.stg.account: no account 'nonprd'" in message


def test_two_environments_on_one_branch(tmp_path):
    message = error(tmp_path, GOOD.replace("branch: prod", "branch: staging"))
    assert "line 11, field environments.prod.branch: branch 'staging' is already the branch of environment 'stg'" \
        in message


@pytest.mark.parametrize("name", ["Stg", "1stg", "stg_2", "stg;rm"])
def test_environment_name_pattern(tmp_path, name):
    message = error(tmp_path, GOOD.replace("  stg:\n", f"  {name}:\n"))
    assert f"line 7, field environments.{name}: {name!r} is not a valid name" in message


def test_all_problems_are_reported_at_once(tmp_path):
    text = GOOD.replace('"012345678901"', '"123"').replace("    protected: true", "    protcted: true")
    message = error(tmp_path, text)
    assert "accounts.nonprod.id" in message and "environments.prod.protcted" in message


def test_not_yaml(tmp_path):
    message = error(tmp_path, GOOD + "  bad: [unclosed\n")
    assert "not valid YAML" in message and "line" in message


def test_empty_file(tmp_path):
    assert "empty" in error(tmp_path, "")


def test_missing_file_via_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_CONFIG", str(tmp_path / "nope.yml"))
    with pytest.raises(RunbookError) as caught:
        config.load()
    assert "does not exist" in caught.value.message and "RUNBOOK_CONFIG" in caught.value.message


def test_unknown_environment_lists_the_valid_names(tmp_path):
    cfg = load(tmp_path, GOOD)
    with pytest.raises(RunbookError) as caught:
        cfg.environment("stag")
    assert "Did you mean 'stg'" in caught.value.message and "stg, prod" in caught.value.message


@pytest.mark.parametrize("name", ["stag", "STG"])
def test_the_fix_of_an_unknown_environment_is_the_closest_name_with_the_tasks_flag(tmp_path, name):
    cfg = load(tmp_path, GOOD)
    with pytest.raises(RunbookError) as caught:
        cfg.environment(name, "--name")
    assert caught.value.fix.startswith("--name stg  (the valid names: stg, prod)")


# -- every name a later step builds is checked here, before anything changes --------------------------


@pytest.mark.parametrize("project", ["awsome-api", "aws", "ssm-tools", "ssmith"])
def test_project_that_ssm_refuses_in_a_parameter_name(tmp_path, project):
    message = error(tmp_path, GOOD.replace("project: acme-api", f"project: {project}"))
    assert "line 1, field project" in message and "may not begin with 'aws' or 'ssm'" in message
    assert "sysman-paramstore-su-create.html" in message


@pytest.mark.parametrize("project", ["acme-api", "awsome-api", "ssm-x", "a-ws", "x" * 31])
def test_config_check_and_record_name_share_one_rule(tmp_path, project):
    """The configuration check refuses a project exactly when SSM would refuse the record's parameter name."""
    from runbook import names

    record_refuses = names.ssm_parameter(f"/{project}/iam/account") is not None
    try:
        load(tmp_path, GOOD.replace("project: acme-api", f"project: {project}"))
        config_refuses = False
    except RunbookError:
        config_refuses = True
    assert config_refuses == record_refuses


@pytest.mark.parametrize("template, needle", [
    ("{project}_tfstate-{account_id}", "no '_'"),
    ("{project}..tfstate-{account_id}", "no '..'"),
    ("{project}-Tfstate-{account_id}", "no upper case"),
    ("{project}-terraform-state-of-{account_id}-in-{region}-for-{project}", "bucket names take 3 to 63"),
    ("{project}-tfstate-{account_id}-s3alias", "reserves"),
])
def test_state_bucket_name_after_placeholders_are_filled(tmp_path, template, needle):
    text = GOOD + f'terraform:\n  backend:\n    state_bucket: "{template}"\n'
    message = error(tmp_path, text)
    assert "line 19, field terraform.backend.state_bucket" in message and needle in message
    assert "bucketnamingrules.html" in message


def test_default_bucket_name_too_long_points_at_project(tmp_path):
    text = GOOD.replace("project: acme-api", "project: " + "a" * 31) + \
        'terraform:\n  backend:\n    state_bucket: "{project}-terraform-state-bucket-{account_id}"\n'
    message = error(tmp_path, text)
    assert "is 67 characters; bucket names take 3 to 63" in message


@pytest.mark.parametrize("template", ["{project}/locks", "{project} locks"])
def test_lock_table_name_after_placeholders_are_filled(tmp_path, template):
    message = error(tmp_path, GOOD + f'terraform:\n  backend:\n    lock_table: "{template}"\n')
    assert "field terraform.backend.lock_table" in message and "not a DynamoDB table name" in message
    assert "HowItWorks.NamingRulesDataTypes.html" in message


def test_state_key_longer_than_s3_allows(tmp_path):
    message = error(tmp_path, GOOD + 'terraform:\n  backend:\n    account_state_key: "{project}/' + "k" * 1100 + '"\n')
    assert "field terraform.backend.account_state_key" in message and "keys take 1 to 1024" in message


@pytest.mark.parametrize("key", ["/{project}/account.tfstate", "{project}/account/", "{project}//account.tfstate",
                                 "{project}/{environment}/account.tfstate"])
def test_a_state_key_terraform_refuses_is_refused_before_anything_is_created(tmp_path, key):
    # the last one renders to acme-api//account.tfstate: {environment} is empty in the account scope's key
    message = error(tmp_path, GOOD + f'terraform:\n  backend:\n    account_state_key: "{key}"\n')
    assert "field terraform.backend.account_state_key" in message and "Terraform's S3 backend refuses it" in message


@pytest.mark.parametrize("host", ["https://", "https:///api", "https://:443", "https://circleci.example.com/api",
                                  "https://circleci.example.com:99999", "https://circleci.example.com:0",
                                  "https://circleci.example.com:65536"])
def test_a_circleci_host_without_a_host_name_is_refused_at_its_line(tmp_path, host):
    message = error(tmp_path, GOOD + f"  host: {host}\n")
    assert "line 17, field circleci.host" in message and "a host name" in message


def test_a_circleci_server_host_is_accepted(tmp_path):
    assert load(tmp_path, GOOD + "  host: https://circleci.example.com:8443/\n").circleci.host.endswith(":8443/")
    for port in ("1", "80", "9999", "10000", "59999", "64999", "65499", "65529", "65535"):
        assert load(tmp_path, GOOD + f"  host: https://ci.example.com:{port}\n").circleci.host.endswith(port)


TWO_ACCOUNTS = GOOD.replace("    region: eu-west-1\n", "    region: eu-west-1\n  other:\n    id: \"012345678901\"\n"
                                                    "    region: REGION\n", 1)


def test_two_accounts_with_one_id_in_two_regions_are_refused_one_bucket_name_cannot_be_in_both(tmp_path):
    message = error(tmp_path, TWO_ACCOUNTS.replace("REGION", "us-east-1"))
    assert "field accounts.other.region" in message and "S3 bucket names are global" in message
    assert load(tmp_path, TWO_ACCOUNTS.replace("REGION", "eu-west-1"))  # one region: one account, a warning
    assert load(tmp_path, TWO_ACCOUNTS.replace("REGION", "us-east-1") + "terraform:\n  backend:\n"
                "    state_bucket: \"{project}-tfstate-{account_id}-{region}\"\n")


def test_two_accounts_with_one_state_bucket_name_are_refused_a_bucket_is_in_one_account(tmp_path):
    text = TWO_ACCOUNTS.replace("REGION", "eu-west-1").replace('    id: "012345678901"\n    region: eu-west-1\nenv',
                                                               '    id: "112345678901"\n    region: eu-west-1\nenv')
    message = error(tmp_path, text + 'terraform:\n  backend:\n    state_bucket: "{project}-tfstate"\n')
    assert "line 22, field terraform.backend.state_bucket: the state bucket acme-api-tfstate" in message
    assert "S3 bucket names are global" in message and "put {account_id} in state_bucket" in message
    assert load(tmp_path, text)  # the default name has the account ID in it


def test_environment_name_too_long_for_the_iam_role_names(tmp_path):
    name = "staging-environment-for-the-long-running-tests"
    message = error(tmp_path, GOOD.replace("  stg:\n", f"  {name}:\n"))
    assert f"line 7, field environments.{name}: the IAM role name 'acme-api-{name}-lambda-worker'" in message
    assert "IAM allows 64" in message and "reference_iam-quotas.html" in message


def test_longest_environment_name_the_iam_role_names_allow(tmp_path):
    name = "e" * (64 - len("acme-api--lambda-worker"))
    cfg = load(tmp_path, GOOD.replace("  stg:\n", f"  {name}:\n"))
    assert name in cfg.environments


def test_iam_name_table_matches_the_root_modules():
    """config.IAM_NAMES holds the longest IAM names the shipped root modules build; fail when the .tf changes."""
    import re

    account = (config.PROJECT_ROOT / "iam/terraform/account-specific/main/main.tf").read_text()
    environment = (config.PROJECT_ROOT / "iam/terraform/environment-specific/main/main.tf").read_text()
    assert 'deployer_name = "${var.project}-circleci-deployer"' in account
    assert "name = local.deployer_name" in account and re.search(r"name\s+= local.deployer_name", account)
    assert 'prefix    = "${var.project}-${var.environment}"' in environment
    assert re.search(r'name\s+= "\$\{local.prefix\}-lambda-\$\{each.key\}"', environment)
    assert re.search(r'name\s+= "\$\{each.value.name\}-inline"', environment)
    roles_block = environment.split("lambda_roles = {", 1)[1].split("\n}\n", 1)[0]
    keys = re.findall(r"^    ([a-z0-9_-]+) = \[", roles_block, flags=re.M)
    longest = max(keys, key=len)
    assert ("role", "{project}-{environment}-lambda-" + longest) in config.IAM_NAMES["environment"]
    assert ("user", "{project}-circleci-deployer") in config.IAM_NAMES["account"]
    assert ("policy", "{project}-circleci-deployer") in config.IAM_NAMES["account"]


@pytest.mark.parametrize("backend", [
    {"account_state_key": "{project}/iam/stg.tfstate", "environment_state_key": "{project}/iam/{environment}.tfstate"},
    {"account_state_key": "{project}/iam/env/test.tfstate"},  # the default environment key of test
])
def test_two_scopes_on_one_state_object_are_refused(tmp_path, backend):
    import yaml

    data = yaml.safe_load(config.DEFAULT_CONFIG.read_text())
    data["terraform"]["backend"].update(backend)
    path = tmp_path / "environments.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RunbookError) as caught:
        config.load(path)
    assert "two root modules would replace each other's state" in caught.value.message


def test_an_explicit_path_is_named_as_such_never_as_runbook_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_CONFIG", str(tmp_path / "elsewhere.yml"))
    with pytest.raises(RunbookError) as caught:
        config.load(tmp_path / "missing.yml")
    assert f"Where: --path {tmp_path / 'missing.yml'}" in caught.value.message
    assert "RUNBOOK_CONFIG" not in caught.value.message


@pytest.mark.parametrize("branch", ["--upload-pack=evil", "staging.lock", "release.lock/x", "@", "HEAD", "staging.",
                                    "release/", "/release", "a//b", "a..b", "a@{1}", ".hidden", "a/.b", "a b",
                                    "a\\tb", "\\u202estaging", "a" * 601])
def test_a_branch_git_refuses_is_refused_at_its_line(tmp_path, branch):
    message = error(tmp_path, GOOD.replace("branch: staging", f'branch: "{branch}"'))
    assert "line 8, field environments.stg.branch:" in message and "is not a git branch name" in message
    assert "for example branch: staging" in message and len(message) < 1000


@pytest.mark.parametrize("branch", ["feature/JIRA-1_2", "release-1.2", "a@b", "x" * 100])
def test_a_branch_git_accepts_is_accepted(tmp_path, branch):
    assert load(tmp_path, GOOD.replace("branch: staging", f'branch: "{branch}"')).environments["stg"].branch == branch


@pytest.mark.parametrize("template", ["{account_id[0]}x{project!r:>99999999}", "{project.real}", "{project!s}",
                                      "{project:>9}", "{0}", "x{}x", "{project:{region}}", "{project", "{project:}"])
def test_a_backend_template_takes_only_the_plain_placeholders(tmp_path, template):
    message = error(tmp_path, GOOD + f'terraform:\n  backend:\n    state_bucket: "{template}"\n')
    assert "line 19, field terraform.backend.state_bucket" in message and len(message) < 1000
    assert "{project}, {account_id}, {region}, {environment}" in message


def test_an_endpoint_url_with_a_password_is_refused_and_not_shown(tmp_path):
    from runbook import console

    text = GOOD.replace("    region: eu-west-1\n", "    region: eu-west-1\n    endpoint_url: "
                        "http://admin:S3cretPW@127.0.0.1:5000\n")
    message = error(tmp_path, text)
    assert "line 6, field accounts.nonprod.endpoint_url" in message and "AWS credential chain" in message
    assert "S3cretPW" not in console.mask(message)


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:5000", True), ("http://localhost:4566", True), ("http://127.1.2.3", True),
    ("http://[::1]:5000/", True), ("http://LOCALHOST", True), (None, False),
    ("https://s3.eu-west-1.amazonaws.com", False), ("http://10.0.0.5:5000", False),
    ("http://127.0.0.1.nip.io:5000", False), ("http://localhost.evil.com", False),
])
def test_an_account_is_local_only_at_a_loopback_endpoint(url, local):
    assert config.Account("a", "012345678901", "eu-west-1", endpoint_url=url).local is local


@pytest.mark.parametrize("section, needle", [
    ('terraform:\n  required_version: ""\n',
     "field terraform.required_version: '' is not a Terraform version constraint (the same pin as the root modules' "
     'versions.tf); for example required_version: "~> 1.0"'),
    ('terraform:\n  backend:\n    state_bucket: "}}"\n',
     "field terraform.backend.state_bucket: '}}' is not a name template of 3 characters or more for the S3 state "
     'bucket; for example state_bucket: "{project}-tfstate-{account_id}"'),
])
def test_a_value_too_short_is_explained_with_an_example(tmp_path, section, needle):
    assert needle in error(tmp_path, GOOD + section)  # it was jsonschema's "should be non-empty", with no example
