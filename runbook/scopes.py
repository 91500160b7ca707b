"""The two IAM scopes: what each applies, where its state and its record live, how to apply it.

A :class:`Scope` is either the account scope of one AWS account (the
account-specific root module) or the environment scope of one environment (the
environment-specific root module). Everything that must agree between the
administrator's laptop and the pipeline's gate (the root module, the resolved
inputs, the fingerprint, the record's parameter, the command that applies it)
is derived here, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runbook import fingerprint, records
from runbook.config import PROJECT_ROOT, Account, Backend, Config, Environment
from runbook.terraform import DEPLOY_SCRIPT

ACCOUNT = "account"
ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Scope:
    """One IAM scope.

    Args:
        config: the loaded configuration.
        kind: "account" or "environment".
        account: the AWS account that holds the resources, the state and the record.
        environment: the environment (environment scope), or None (account scope).
    """

    config: Config
    kind: str
    account: Account
    environment: Environment | None = None

    @classmethod
    def of_account(cls, config: Config, account: Account) -> Scope:
        return cls(config, ACCOUNT, account)

    @classmethod
    def of_environment(cls, config: Config, environment: Environment) -> Scope:
        return cls(config, ENVIRONMENT, environment.account, environment)

    @property
    def record_scope(self) -> str:
        """"account" or the environment name, as :mod:`runbook.records` names scopes."""
        return self.environment.name if self.environment else records.ACCOUNT

    @property
    def label(self) -> str:
        if self.environment:
            return f"environment {self.environment.name}"
        return f"account {self.account.name} ({self.account.id})"

    @property
    def root(self) -> Path:
        return self.config.roots[self.kind]

    @property
    def backend(self) -> Backend:
        return self.config.backend(self.kind, self.account, self.environment.name if self.environment else None)

    @property
    def parameter(self) -> str:
        """The SSM parameter of the applied record."""
        return records.parameter_name(self.config.project, self.record_scope)

    def tf_vars(self) -> dict[str, str]:
        """The root module's input variables (passed as TF_VAR_*)."""
        values = {"project": self.config.project, "account_id": self.account.id, "region": self.account.region}
        if self.environment:
            values["environment"] = self.environment.name
        else:
            values.update(deployer_vars(self.config, self.account))
        return values

    def inputs(self) -> dict[str, str]:
        """The resolved inputs that go into the fingerprint: variables plus backend names."""
        b = self.backend
        return {**self.tf_vars(), "scope": self.kind, "state_bucket": b.bucket, "state_key": b.key,
                "lock_table": b.lock_table}

    def scripts(self) -> dict[str, Path]:
        """The deploy scripts on this scope's apply path, by repository-relative POSIX name: the shared
        ``iam/terraform/bin/deploy-app.sh`` and the scope's documented entry point
        ``iam/terraform/<kind>-specific/bin/deploy-app.sh``."""
        entry = DEPLOY_SCRIPT.parent.parent / f"{self.kind}-specific" / "bin" / DEPLOY_SCRIPT.name
        return {path.relative_to(PROJECT_ROOT).as_posix(): path for path in (DEPLOY_SCRIPT, entry)}

    def fingerprint(self) -> str:
        """SHA-256 of everything the apply reads (64 hex characters): the root module, the local modules
        it calls and the files it reads outside its directory, :meth:`scripts` and :meth:`inputs`. The
        one entry point for the status, the gate and the record. Raises RunbookError as
        :func:`runbook.fingerprint.compute` does (a root, module, file or link outside the repository)."""
        return fingerprint.compute(self.root, self.scripts(), self.inputs(), top=PROJECT_ROOT)

    def fingerprint_parts(self) -> list[fingerprint.Part]:
        """What :meth:`fingerprint` hashes, part by part (compare two machines' listings)."""
        return fingerprint.describe(self.root, self.scripts(), self.inputs(), top=PROJECT_ROOT)

    def command(self, via: Environment | None = None) -> str:
        """The command an administrator runs to apply this scope (from *via*'s branch for the account)."""
        if self.environment:
            return f"inv iam.env --name {self.environment.name}"
        env = via or next((e for e in self.config.environments.values() if e.account == self.account), None)
        return f"inv iam.account --env {env.name}" if env else "inv iam.account"


def deployer_vars(config: Config, account: Account) -> dict[str, str]:
    """The account root's CI deployer inputs: ``ci_deployer`` ("oidc" or "user") and, for oidc, the
    CircleCI organization, project and repository and ``deploy_branches`` (a JSON list, as Terraform
    reads a list from TF_VAR_*: the branches of the environments in *account*, sorted).
    """
    ci = config.circleci
    mode = ci.deployer if ci else "user"
    values = {"ci_deployer": mode}
    if ci and mode == "oidc":
        branches = sorted(e.branch for e in config.environments.values() if e.account == account)
        values.update(circleci_org_id=ci.org_id or "", circleci_project_id=ci.project_id or "",
                      circleci_vcs_origin=ci.repository_origin or "", deploy_branches=json.dumps(branches))
    return values


def for_environment(config: Config, environment: Environment) -> list[Scope]:
    """The scopes a deploy of *environment* needs, in the order they must be applied: account, then environment."""
    return [Scope.of_account(config, environment.account), Scope.of_environment(config, environment)]
