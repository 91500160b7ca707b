"""The run's decisions, from facts to findings and actions: no git, no AWS, no Terraform."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from runbook import backend, decide, git, versions
from runbook.errors import RunbookError
from runbook.facts import Options
from runbook.scopes import Scope
from tests.unit.conftest import HEAD, TREES, make_facts


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def test_a_run_on_the_environments_branch_equal_to_the_remote_has_no_local_finding(cfg):
    assert decide.local_findings(make_facts(cfg)) == []


def test_a_detached_head_is_named_as_such(cfg):
    facts = make_facts(cfg, checkout=git.Checkout(None, HEAD, ()))
    [found] = decide.local_findings(facts)
    assert found.id == "wrong-branch" and "HEAD is detached" in found.what and "branch 'HEAD'" not in found.what
    assert found.fix == "git checkout staging && git pull --ff-only"


def test_another_branch_is_refused_unless_the_check_is_skipped(cfg):
    other = git.Checkout("feature/x", HEAD, ())
    assert ids(decide.local_findings(make_facts(cfg, checkout=other))) == ["wrong-branch"]
    assert decide.local_findings(make_facts(cfg, checkout=other, opts=Options(skip_branch_check=True))) == []


def test_a_detached_head_is_refused_even_with_the_branch_check_skipped(cfg):
    facts = make_facts(cfg, checkout=git.Checkout(None, HEAD, ()), opts=Options(skip_branch_check=True))
    [found] = decide.local_findings(facts)
    assert "--skip-branch-check needs a branch" in found.what


def test_a_branch_never_pushed_says_merge_through_review_and_a_dry_run_says_fetch(cfg):
    [real] = decide.local_findings(make_facts(cfg, remote_head=None))
    assert real.id == "head-not-on-remote" and "through the team's usual review" in real.fix
    assert "git push -u origin staging" in real.fix
    # a dry run does not fetch: the branch may be there already (fetching the branch by name would fail if not)
    [dry] = decide.local_findings(make_facts(cfg, remote_head=None, opts=Options(dry_run=True)))
    assert dry.fix.startswith("git fetch origin, then run again")
    [ahead] = decide.local_findings(make_facts(cfg, remote_head="0" * 40))
    assert "merge them through the usual review" in ahead.fix and "push your commits" not in ahead.fix
    # a rehearsal (every account a local AWS) is never told to push to the team's repository
    local = replace(cfg, accounts={name: replace(a, endpoint_url="http://127.0.0.1:5000")
                                   for name, a in cfg.accounts.items()})
    local = replace(local, environments={name: replace(e, account=local.accounts[e.account.name])
                                         for name, e in cfg.environments.items()})
    [rehearsal] = decide.local_findings(make_facts(local, remote_head=None))
    assert "git push -u rehearsal staging" in rehearsal.fix and "origin" not in rehearsal.fix


def test_a_head_unlike_the_teams_branch_names_both_commits(cfg):
    [found] = decide.local_findings(make_facts(cfg, remote_head="b" * 40))
    assert found.id == "head-not-on-remote" and "aaaaaaaaaaaa" in found.what and "bbbbbbbbbbbb" in found.what
    assert "git pull --ff-only origin staging" in found.fix


def test_a_configuration_outside_the_commit_is_refused_for_a_real_account(cfg):
    [found] = decide.local_findings(make_facts(cfg, config_committed=False))
    assert found.id == "config-not-committed" and "nonprod" in found.what


def test_a_rehearsal_may_use_a_configuration_outside_the_commit(cfg):
    account = replace(cfg.accounts["nonprod"], endpoint_url="http://127.0.0.1:5000")
    env = replace(cfg.environments["stg"], account=account)
    rehearsal = replace(cfg, accounts={**cfg.accounts, "nonprod": account}, environments={**cfg.environments,
                                                                                           "stg": env})
    assert decide.local_findings(make_facts(rehearsal, config_committed=False)) == []


def test_a_root_module_missing_from_the_commit_names_the_field(cfg):
    facts = make_facts(cfg, trees={**TREES, "iam/terraform/environment-specific/main": None})
    [found] = decide.local_findings(facts)
    assert found.id == "root-module-missing" and "terraform.roots.environment" in found.where


def test_s3_lock_files_need_terraform_1_10(cfg):
    s3 = replace(cfg, lock_mode="s3")
    old = make_facts(s3, terraform=versions.Found("/bin/terraform", "1.0.3"))
    assert ids(decide.local_findings(old)) == ["terraform-version"]
    assert decide.local_findings(make_facts(s3)) == []


def test_the_shipped_pins_agree_so_no_terraform_passes_the_preflight_that_init_refuses(cfg):
    """terraform.required_version of the configuration and each root's required_version must be one constraint
    (Terraform's own init refuses a version its root does not admit: FAILURES names that too)."""
    import re

    from runbook import config

    shipped = config.load(config.DEFAULT_CONFIG)
    for kind, root in shipped.roots.items():
        text = (config.PROJECT_ROOT / root / "versions.tf").read_text()
        assert re.search(r'required_version\s*=\s*"([^"]+)"', text).group(1) == shipped.required_version, kind
    assert config.DEFAULTS["required_version"] == shipped.required_version


def test_an_unpinned_module_stops_the_run(cfg):
    facts = make_facts(cfg, unpinned=("module x in roots/env/main.tf: the source 'git::https://x' is not pinned",))
    [found] = decide.local_findings(facts)
    assert found.id == "module-source-unpinned" and "git::https://x" in found.what


def test_credentials_of_another_account_stop_everything_else(cfg):
    facts = make_facts(cfg, identity=replace(make_facts(cfg).identity, account_id="999999999999"))
    [found] = decide.aws_findings(facts)
    assert found.id == "wrong-account" and "999999999999" in found.what and "123456789012" in found.what


def test_a_profile_is_named_in_the_wrong_account_fix(cfg):
    facts = make_facts(cfg, "prod", identity=replace(make_facts(cfg).identity, account_id="123456789012"))
    assert "AWS_PROFILE=acme-prod" in decide.aws_findings(facts)[0].fix


def test_a_lock_table_with_another_key_is_refused(cfg):
    facts = make_facts(cfg, state=backend.BackendState(True, True, "ACTIVE", "id (S)"))
    assert "lock-table-wrong-key" in ids(decide.aws_findings(facts))


def test_a_missing_backend_is_created_only_on_a_true_first_deploy(cfg):
    first = make_facts(cfg, state=backend.BackendState(False, False))
    assert decide.aws_findings(first) == []
    action = decide.backend_action(first)
    assert action.needed and "first deploy into account 123456789012" in action.reason
    assert "bucket and lock table must be created" in action.reason


def test_a_missing_backend_with_signs_of_an_earlier_deploy_is_refused(cfg):
    facts = make_facts(cfg, state=backend.BackendState(False, True, "ACTIVE", "LockID (S)"),
                       evidence=("environment stg has an applied record",),
                       digests=("other-bucket/acme-api/iam/env/stg.tfstate",))
    [found] = decide.aws_findings(facts)
    assert found.id == "backend-missing" and "NOT a first deploy" in found.what
    assert "other-bucket" in found.fix and "inv iam.bootstrap --env stg --dry-run" in found.fix
    reason = decide.backend_action(facts).reason  # what iam.bootstrap lists: never "no applied record"
    assert reason == "NOT a first deploy into account 123456789012 (see below): the bucket must be created again"


@pytest.mark.parametrize("state, words", [
    (backend.BackendState(True, True, "ACTIVE", "LockID (S)", missing=("versioning",)), "lacks versioning"),
    (backend.BackendState(True, True, "CREATING", "LockID (S)"), "is CREATING"),
])
def test_an_incomplete_backend_is_repaired_or_waited_for(cfg, state, words):
    action = decide.backend_action(make_facts(cfg, state=state))
    assert action.needed and words in action.reason


def test_a_verified_backend_is_left_alone(cfg):
    action = decide.backend_action(make_facts(cfg))
    assert not action.needed and "verified" in action.reason


def test_a_scope_with_a_record_but_no_state_is_refused_with_the_way_back(cfg):
    record = {"commit": "c" * 40, "applied_at": "2026-01-01T00:00:00Z", "fingerprint": "f" * 64}
    facts = make_facts(cfg, state=backend.BackendState(True, True, "ACTIVE", "LockID (S)"),
                       records={"stg": record}, hints={"stg": "restore it with aws s3api delete-object ..."})
    [found] = decide.aws_findings(facts)
    assert found.id == "state-missing" and "cccccccccccc" in found.what
    assert found.fix.startswith("restore it with")


def test_a_state_written_by_a_newer_terraform_is_refused(cfg):
    key = cfg.backend("environment", cfg.accounts["nonprod"], "stg").key
    facts = make_facts(cfg, state=backend.BackendState(True, True, "ACTIVE", "LockID (S)", states={key: "1.12.0"}))
    [found] = decide.aws_findings(facts)
    assert found.id == "terraform-version" and "1.12.0" in found.what and ">= 1.12.0" in found.fix


def account_record(cfg, branch: str, fingerprint: str = "f" * 64) -> dict:
    return {"branch": branch, "fingerprint": fingerprint, "commit": "c" * 40, "applied_by": "arn:aws:iam::1:user/x",
            "applied_at": "2026-01-01T00:00:00Z"}


def test_another_branchs_account_iam_is_not_replaced_silently(cfg):
    facts = make_facts(cfg, kinds=("account",), records={"account": account_record(cfg, "develop")})
    [found] = decide.aws_findings(facts)
    assert found.id == "take-over-needed" and "'develop'" in found.what and "--take-over" in found.fix


def test_yes_never_answers_the_take_over(cfg):
    facts = make_facts(cfg, kinds=("account",), records={"account": account_record(cfg, "develop")},
                       opts=Options(assume_yes=True))
    assert "--yes does not answer this" in decide.aws_findings(facts)[0].what


def test_take_over_given_makes_it_an_action(cfg):
    facts = make_facts(cfg, kinds=("account",), records={"account": account_record(cfg, "develop")},
                       opts=Options(take_over=True))
    assert decide.aws_findings(facts) == []
    assert [a.kind for a in decide.actions(facts)][:2] == ["backend", "take-over"]


def test_bootstrap_which_has_no_commit_is_no_take_over(cfg):
    # iam.bootstrap examines without a commit: it once stopped on root-module-missing fingerprinting no tree
    facts = make_facts(cfg, kinds=("account",), records={"account": account_record(cfg, "develop")}, trees={})
    assert decide.take_over_text(facts) is None and decide.aws_findings(facts) == []


def test_the_same_branch_or_the_same_fingerprint_is_no_take_over(cfg):
    same_branch = make_facts(cfg, kinds=("account",), records={"account": account_record(cfg, "staging")})
    assert decide.take_over_text(same_branch) is None
    scope = Scope.of_account(cfg, cfg.accounts["nonprod"])
    same = make_facts(cfg, kinds=("account",),
                      records={"account": account_record(cfg, "develop", scope.fingerprint(TREES))})
    assert decide.take_over_text(same) is None


def test_a_release_skips_a_scope_whose_record_is_current(cfg):
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    current = {"fingerprint": scope.fingerprint(TREES), "commit": "d" * 40, "applied_by": "arn:x:user/alice"}
    facts = make_facts(cfg, records={"stg": current}, opts=Options(only_needed=True))
    assert decide.needed(facts, scope) == (False, "record current: applied at dddddddddddd by alice")
    todo = decide.actions(facts)
    assert not any(a.needed for a in todo)
    assert todo[0].reason == "no IAM step is needed, so the backend is not used"
    gone = replace(facts, state=backend.BackendState(False, False), evidence=("a record",))
    assert decide.aws_findings(gone) == []  # the backend is not used: its absence stops nothing


def test_iam_env_applies_a_current_scope_too(cfg):
    scope = Scope.of_environment(cfg, cfg.environments["stg"])
    current = {"fingerprint": scope.fingerprint(TREES), "commit": "d" * 40, "applied_by": "arn:x:user/alice"}
    facts = make_facts(cfg, records={"stg": current})
    assert decide.needed(facts, scope) == (True, "record current: applied at dddddddddddd by alice")


def test_actions_come_in_order_with_their_commands(cfg):
    facts = make_facts(cfg, kinds=("account", "environment"))
    todo = decide.actions(facts)
    assert [a.kind for a in todo] == ["backend"] + ["plan", "confirm", "apply", "record"] * 2
    assert todo[1].scope.kind == "account" and todo[5].scope.kind == "environment"
    assert "/acme-api/iam/env/stg" in todo[-1].lines[0]


@pytest.mark.parametrize("env, destroy, expected", [
    ("stg", 0, []), ("stg", 2, ["the plan destroys 2 resource(s)"]), ("prod", 0, ["environment prod is protected"]),
])
def test_an_apply_is_confirmed_when_protected_or_destroying(cfg, env, destroy, expected):
    assert decide.confirm_reasons(make_facts(cfg, env), destroy) == expected


def test_a_dry_run_knows_no_aws_facts_and_says_when_they_are_checked(cfg):
    facts = make_facts(cfg, aws_facts=False, opts=Options(dry_run=True))
    action = decide.backend_action(facts)
    assert action.needed and "verified at run time" in action.reason
    assert decide.aws_findings(facts) == []


def test_a_remote_endpoint_is_no_rehearsal_and_needs_the_committed_configuration(cfg):
    account = replace(cfg.accounts["nonprod"], endpoint_url="https://s3.eu-west-1.amazonaws.com")
    env = replace(cfg.environments["stg"], account=account)
    remote = replace(cfg, accounts={**cfg.accounts, "nonprod": account}, environments={**cfg.environments, "stg": env})
    assert ids(decide.local_findings(make_facts(remote, config_committed=False))) == ["config-not-committed"]


def test_missing_credentials_name_the_environment_the_run_is_for(cfg, monkeypatch):
    # the account scope last among the scopes: the message once named it ("needed for account nonprod" after
    # "for account nonprod"), or another environment of the account for iam.bootstrap
    import boto3

    from runbook.facts import examine_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    facts = make_facts(cfg, kinds=("environment", "account"), aws_facts=False)
    with pytest.raises(RunbookError) as caught:
        examine_aws(facts, boto3.Session(region_name="eu-west-1"))
    assert caught.value.id == "aws-no-credentials" and caught.value.what.endswith("needed for environment stg")


def test_credentials_that_expire_within_the_margin_stop_the_run_before_the_plan(cfg):
    from datetime import datetime, timedelta, timezone

    from runbook import aws

    soon = datetime.now(timezone.utc) + timedelta(minutes=10)
    facts = make_facts(cfg, credentials=aws.Credentials("AKIA", "secret", "tok", soon))
    [found] = decide.aws_findings(facts)
    assert found.id == "credentials-expiring" and "in 10 min" in found.what and "nothing was applied" in found.what
    later = replace(facts, credentials=aws.Credentials("AKIA", "secret", "tok", soon + timedelta(minutes=50)))
    assert decide.aws_findings(later) == []
    assert decide.aws_findings(replace(facts, credentials=aws.Credentials("AKIA", "secret"))) == []  # not known


def test_the_expiry_of_refreshable_credentials_is_kept_when_they_are_frozen():
    from datetime import datetime, timezone

    from botocore.credentials import RefreshableCredentials

    from runbook import aws

    when = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    found = RefreshableCredentials("AKIA", "secret", "tok", when, lambda: {}, "sso")
    session = type("Session", (), {"get_credentials": lambda self: found})()
    account = config_account()
    frozen = aws.frozen_credentials(session, account, purpose="environment stg")
    assert frozen.expires_at == when and frozen.token == "tok"
    error = frozen.expiring(account, now=datetime(2030, 1, 1, 11, 50, tzinfo=timezone.utc))
    assert error.id == "credentials-expiring" and "12:00:00 UTC, in 10 min" in error.what


def config_account():
    from runbook.config import Account

    return Account("nonprod", "123456789012", "eu-west-1", profile="admin")


def test_credentials_are_checked_again_before_the_apply(cfg, monkeypatch):
    # a confirmation can wait for minutes: the apply does not start on keys about to expire
    from datetime import datetime, timedelta, timezone

    from runbook import aws, iam

    soon = datetime.now(timezone.utc) + timedelta(minutes=5)
    facts = make_facts(cfg, credentials=aws.Credentials("AKIA", "secret", "tok", soon))
    monkeypatch.setattr(iam, "_script", lambda *args: pytest.fail("the apply started"))
    with pytest.raises(RunbookError) as caught:
        iam._act_apply(iam.Run(facts, "inv iam.env --name stg"), decide.Action("apply", "apply", "", facts.scopes[0]))
    assert caught.value.id == "credentials-expiring"
