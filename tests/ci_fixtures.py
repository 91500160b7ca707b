"""What the CircleCI tests share: the stand-in and a client aimed at it, a loaded configuration, job lists.

A test module takes the fixtures it uses into its namespace, where pytest finds them:
``ci, client = ci_fixtures.ci, ci_fixtures.client``.
"""

from __future__ import annotations

import pytest
import yaml

from runbook import config as configuration
from tests.circleci_standin import DEFAULT_SLUG, CircleCIStandIn, fast_client, job
from tests.project import base_config

SLUG = DEFAULT_SLUG
WORKFLOW = "build-test-deploy"
HEAD = "c" * 40
#: A token value that must never show in any output, message or log.
SENTINEL = "SENTINEL-TOKEN-do-not-print-8f3a"


@pytest.fixture
def ci():
    """The CircleCI stand-in, two items a page (so that paging is used), its token the sentinel."""
    with CircleCIStandIn(token=SENTINEL, page_size=2) as standin:
        yield standin


@pytest.fixture
def client(ci):
    """A client for the project :data:`SLUG` aimed at the stand-in, with test-sized timeouts and waits."""
    return fast_client(ci)


@pytest.fixture
def cfg(tmp_path):
    """The tests' configuration (:func:`tests.project.base_config`), loaded."""
    path = tmp_path / "environments.yml"
    path.write_text(yaml.safe_dump(base_config(None)))
    return configuration.load(path)


def gated_jobs(deploy: str = "failed") -> list[dict]:
    """The pipeline of an environment's branch: test -> iam-gate-stg -> deploy-stg (the deploy *deploy*)."""
    return [job("test"), job("iam-gate-stg", requires=["test"]), job("deploy-stg", deploy, requires=["iam-gate-stg"])]


def held_jobs() -> list[dict]:
    """test -> hold (an approval job waiting) -> deploy-stg."""
    return [job("test"), job("hold", "on_hold", requires=["test"], type="approval"),
            job("deploy-stg", "blocked", requires=["hold"])]
