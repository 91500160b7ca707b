"""The fast tier's shared values: a configuration, facts of a run, and AWS clients stubbed in-process.

Nothing here starts a process or a server: the configuration is a file in a temporary folder, AWS
answers come from botocore's Stubber (https://botocore.amazonaws.com/v1/documentation/api/latest/
reference/stubber.html), and facts are built as a run would gather them.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from runbook import aws, backend, config, git, versions
from runbook.facts import Facts, Options
from runbook.scopes import Scope

HEAD = "a" * 40
ACCOUNT_ID = "123456789012"
CONFIG = """\
project: acme-api
accounts:
  nonprod:
    id: "123456789012"
    region: eu-west-1
  prod:
    id: "210987654321"
    region: eu-west-1
    profile: acme-prod
environments:
  dev:
    branch: develop
    account: nonprod
  stg:
    branch: staging
    account: nonprod
  prod:
    branch: prod
    account: prod
    protected: true
circleci:
  project_slug: gh/acme/acme-api
  workflow: build-test-deploy
"""
TREES = {"iam/terraform/account-specific/main": "1" * 40, "iam/terraform/account-specific/bin": "2" * 40,
         "iam/terraform/environment-specific/main": "3" * 40, "iam/terraform/environment-specific/bin": "4" * 40,
         "iam/terraform/bin": "5" * 40, "iam/terraform/modules": None}


def write_config(folder: Path, text: str = CONFIG) -> Path:
    path = folder / "environments.yml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="session")
def cfg(tmp_path_factory) -> config.Config:
    """The test configuration: accounts nonprod (dev, stg) and prod (prod, protected, with a profile)."""
    return config.load(write_config(tmp_path_factory.mktemp("config")))


def make_facts(cfg: config.Config, env: str = "stg", kinds=("environment",), *, aws_facts: bool = True,
               **changes) -> Facts:
    """Facts of a run that would go ahead: on the environment's branch, equal to origin, Terraform 1.11.4, the
    caller in the right account, a verified backend with the scopes' state, no records (unless given)."""
    environment = cfg.environments[env]
    scopes = tuple(Scope.of_account(cfg, environment.account) if kind == "account" else
                   Scope.of_environment(cfg, environment) for kind in kinds)
    facts = Facts(cfg, environment, scopes, changes.pop("opts", Options()),
                  git.Checkout(environment.branch, HEAD, ()), dict(TREES),
                  remote=git.TeamRemote("origin", "the default remote"), remote_head=HEAD,
                  terraform=versions.Found("/usr/bin/terraform", "1.11.4"))
    if aws_facts:
        facts = replace(facts, identity=aws.Identity(f"arn:aws:iam::{environment.account.id}:user/admin",
                                                     environment.account.id, "AIDA"),
                        credentials=aws.Credentials("AKIA", "secret"),
                        state=backend.BackendState(True, True, "ACTIVE", "LockID (S)",
                                                   states={s.backend.key: "1.11.4" for s in scopes}),
                        records={s.name: None for s in scopes})
    return replace(facts, **changes)


_clients: dict[str, object] = {}


@pytest.fixture
def stub():
    """``stub(service)``: a boto3 client and its active Stubber; every expected answer must have been used. The
    client of each service is made once (about 0.2 s each) and stubbed afresh for every test."""
    import boto3
    from botocore.stub import Stubber

    made = []

    def make(service: str):
        if service not in _clients:
            session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="eu-west-1")
            _clients[service] = session.client(service)
        stubber = Stubber(_clients[service])
        stubber.activate()
        made.append(stubber)
        return _clients[service], stubber

    yield make
    for stubber in made:
        stubber.deactivate()
    for stubber in made:
        stubber.assert_no_pending_responses()
