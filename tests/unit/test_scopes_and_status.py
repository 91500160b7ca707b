"""Scopes, their fingerprints from git tree ids, and the status of a commit against the applied records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from runbook import records
from runbook.errors import RunbookError
from runbook.scopes import Scope, all_scopes, environment_for, for_environment
from tests.unit.conftest import TREES


def scopes(cfg):
    account, env = for_environment(cfg, cfg.environments["stg"])
    return account, env


def test_each_scope_reads_its_root_its_entry_point_and_the_shared_folders(cfg):
    account, env = scopes(cfg)
    assert env.paths == ("iam/terraform/environment-specific/main", "iam/terraform/environment-specific/bin",
                         "iam/terraform/bin", "iam/terraform/modules")
    assert account.paths[0] == "iam/terraform/account-specific/main"


def test_the_fingerprint_is_reproducible_from_git_tree_ids_and_the_inputs(cfg):
    _, env = scopes(cfg)
    expected = hashlib.sha256(json.dumps({"format": 3, "inputs": env.inputs(), "trees": env.trees(TREES)},
                                         sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert env.fingerprint(TREES) == expected


@pytest.mark.parametrize("path, account_changes, env_changes", [
    ("iam/terraform/bin", True, True),                          # the shared script: every scope
    ("iam/terraform/modules", True, True),                      # a shared module: every scope that may read it
    ("iam/terraform/environment-specific/main", False, True),   # the environment root: environment scopes only
    ("iam/terraform/account-specific/main", True, False),
    ("README.md", False, False),                                # anything else: no scope
])
def test_what_a_change_marks_pending(cfg, path, account_changes, env_changes):
    account, env = scopes(cfg)
    changed = {**TREES, path: "9" * 40}
    assert (account.fingerprint(changed) != account.fingerprint(TREES)) is account_changes
    assert (env.fingerprint(changed) != env.fingerprint(TREES)) is env_changes


def test_the_inputs_make_environments_differ(cfg):
    dev = Scope.of_environment(cfg, cfg.environments["dev"])
    assert dev.fingerprint(TREES) != scopes(cfg)[1].fingerprint(TREES)


def test_a_commit_without_the_root_module_cannot_be_fingerprinted(cfg):
    with pytest.raises(RunbookError) as caught:
        scopes(cfg)[1].fingerprint({**TREES, "iam/terraform/environment-specific/main": None})
    assert caught.value.id == "root-module-missing"


def test_changed_names_the_folders_and_the_inputs(cfg):
    _, env = scopes(cfg)
    record = {"trees": env.trees(TREES), "inputs": "0" * 64}
    assert env.changed(record, {**TREES, "iam/terraform/bin": "9" * 40}) == ["iam/terraform/bin", "inputs"]
    assert env.changed({"fingerprint": "x"}, TREES) == []  # a record of format 2 names no folders


def test_status_compare(cfg):
    _, env = scopes(cfg)
    assert records.compare(env, TREES, None).state == records.NEVER_APPLIED
    current = records.compare(env, TREES, {"fingerprint": env.fingerprint(TREES)})
    assert current.state == records.CURRENT and not current.needed
    record = {"fingerprint": "0" * 64, "trees": env.trees(TREES), "inputs": env.inputs_digest()}
    pending = records.compare(env, {**TREES, "iam/terraform/environment-specific/main": "9" * 40}, record)
    assert pending.state == records.PENDING
    assert pending.text == "change pending (iam/terraform/environment-specific/main changed)"
    assert records.compare(env, TREES, {"fingerprint": "0" * 64}).text == "change pending"


def test_commands_for_what_is_pending_run_from_the_environments_branch(cfg):
    account, env = scopes(cfg)
    pending = [records.ScopeStatus(account, records.NEVER_APPLIED, ""), records.ScopeStatus(env, records.PENDING, ""),
               records.ScopeStatus(Scope.of_environment(cfg, cfg.environments["dev"]), records.UNKNOWN, "")]
    assert records.commands(pending, branch="staging") == ["inv iam.account --env stg", "inv iam.env --name stg"]
    assert records.commands(pending, branch="main") == [
        "git checkout develop && git pull --ff-only && inv iam.account --env dev",
        "git checkout staging && git pull --ff-only && inv iam.env --name stg"]


def test_the_pending_commands_can_be_pasted_as_one_block(cfg):
    # all scopes pending, on staging: a line without its own checkout must not follow one that checked out another
    # branch, or it would run there
    pending = [records.ScopeStatus(s, records.NEVER_APPLIED, "") for s in all_scopes(cfg)]
    assert records.commands(pending, branch="staging") == [
        "inv iam.account --env stg", "inv iam.env --name stg",
        "git checkout prod && git pull --ff-only && inv iam.account --env prod",
        "git checkout develop && git pull --ff-only && inv iam.env --name dev",
        "git checkout prod && git pull --ff-only && inv iam.env --name prod"]


def test_all_scopes_lists_each_account_once_then_the_environments(cfg):
    assert [s.label for s in all_scopes(cfg)] == ["account nonprod (123456789012)", "account prod (210987654321)",
                                                 "environment dev", "environment stg", "environment prod"]
    assert [s.name for s in all_scopes(cfg, cfg.environments["prod"])] == ["account", "prod"]


def test_the_account_of_oidc_deployers_gets_its_branches(cfg):
    from runbook.config import CircleCI

    oidc = replace(cfg, circleci=CircleCI("gh/acme/acme-api", "w", deployer="oidc", org_id="o", project_id="p"))
    values = Scope.of_account(oidc, oidc.accounts["nonprod"]).tf_vars()
    assert json.loads(values["deploy_branches"]) == ["develop", "staging"]
    assert values["circleci_vcs_origin"] == "github.com/acme/acme-api"


def test_environment_for_a_branch_of_no_environment_or_a_detached_head(cfg):
    assert environment_for(cfg, None, "staging").name == "stg"
    with pytest.raises(RunbookError) as caught:
        environment_for(cfg, None, "main", flag="--name")
    assert "'main' is not the branch of any environment" in caught.value.what and "--name dev" in caught.value.fix
    with pytest.raises(RunbookError) as detached:
        environment_for(cfg, None, None)
    assert "HEAD is detached" in detached.value.what and "'None'" not in detached.value.what


def test_an_ssm_that_does_not_answer_is_asked_once_for_all_the_accounts_behind_it(cfg, stub, monkeypatch):
    # two accounts in one region: one time-out, not one per account (a hanging endpoint cost a minute per account)
    ssm, stubber = stub("ssm")
    stubber.add_client_error("get_parameter", "InternalError", "down", http_status_code=500)
    monkeypatch.setattr(records.aws, "client", lambda *args, **kwargs: ssm)
    monkeypatch.setattr(records.aws, "caller_identity", lambda _, account: records.aws.Identity("a", account.id, "u"))
    statuses = records.examine(all_scopes(cfg), trees=TREES, session_for=lambda account: None)
    assert {st.state for st in statuses} == {records.UNKNOWN}
    assert all("not asked, the same SSM did not answer" in st.reason for st in statuses[1:])


def test_what_merging_would_need_names_each_environments_own_account_only(cfg, capsys):
    from runbook import records
    from runbook.scopes import Scope
    from runbook.tasks import iam_tasks

    def status(scope, state):
        return records.ScopeStatus(scope, state, "f" * 64, changed=("roots/environment",) if state == "pending" else ())

    statuses = [status(Scope.of_account(cfg, cfg.accounts["nonprod"]), records.CURRENT),
                status(Scope.of_account(cfg, cfg.accounts["prod"]), records.NEVER_APPLIED),
                *(status(Scope.of_environment(cfg, e), records.PENDING) for e in cfg.environments.values())]
    iam_tasks._if_merged(cfg, statuses, "feature/x")
    out = capsys.readouterr().out
    assert "merged into staging (stg): inv iam.env --name stg  (environment stg: change pending" in out
    assert "merged into prod (prod): inv iam.account --env prod && inv iam.env --name prod  (account prod: never " \
           "applied; environment prod: change pending" in out


def test_records_read_with_another_accounts_credentials_are_unknown_not_that_accounts(cfg, stub, monkeypatch):
    # every account names its records alike: nonprod's keys would read nonprod's records as prod's
    ssm, stubber = stub("ssm")
    for _ in range(3):  # account nonprod, dev, stg: read with nonprod's own credentials
        stubber.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
    monkeypatch.setattr(records.aws, "client", lambda *args, **kwargs: ssm)
    monkeypatch.setattr(records.aws, "caller_identity",
                        lambda sess, account: records.aws.Identity("arn", cfg.accounts["nonprod"].id, "u"))
    statuses = records.examine(all_scopes(cfg), trees=TREES, session_for=lambda account: None)
    by = {st.scope.label.split(" (")[0]: st for st in statuses}
    assert by["account prod"].state == by["environment prod"].state == records.UNKNOWN
    assert by["environment prod"].reason == "the credentials are for account 123456789012, not 210987654321"
    assert by["environment stg"].state == records.NEVER_APPLIED
