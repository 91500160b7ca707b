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
    assert cfg.roots["account"].name == "main"


def test_unquoted_account_id_that_yaml_turns_into_a_number(tmp_path):
    message = error(tmp_path, GOOD.replace('"012345678901"', "012345670123"))
    assert "line 4, field accounts.nonprod.id" in message and "must be quoted" in message


def test_unquoted_account_id_even_when_it_survives(tmp_path):
    message = error(tmp_path, GOOD.replace('"012345678901"', "012345678901"))
    assert "line 4, field accounts.nonprod.id: quote the account ID" in message


@pytest.mark.parametrize("bad", ['"12345678901"', '"1234567890123"', '"12345678901a"'])
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
