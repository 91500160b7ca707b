"""The two IAM scopes: what each applies, what it may read, where its state and its record live.

Everything that must agree between the administrator's laptop and the pipeline's gate (the paths the apply
may read, the resolved inputs, the fingerprint, the record's parameter, the command that applies it) is
derived here, once, from the configuration and the git tree ids of the commit (ARCHITECTURE.md, "Fingerprint").
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from runbook.config import ACCOUNT, Account, Backend, Config, Environment
from runbook.errors import RunbookError

ENVIRONMENT = "environment"
SHARED_BIN = "iam/terraform/bin"
DEPLOY_SCRIPT = f"{SHARED_BIN}/deploy-app.sh"
FORMAT = 3


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
    def name(self) -> str:
        """"account" or the environment name: the scope as the applied record names it."""
        return self.environment.name if self.environment else ACCOUNT

    @property
    def label(self) -> str:
        if self.environment:
            return f"environment {self.environment.name}"
        return f"account {self.account.name} ({self.account.id})"

    @property
    def root(self) -> str:
        """The root module folder, relative to the top of the repository (POSIX)."""
        return self.config.roots[self.kind]

    @property
    def paths(self) -> tuple[str, ...]:
        """The folders this scope's apply may read, relative to the top of the repository: its root module,
        its documented entry point ``iam/terraform/<kind>-specific/bin``, the shared ``iam/terraform/bin``
        (deploy-app.sh) and the shared modules folder (``terraform.modules``). A change to a shared folder
        marks every scope pending; a change to one root only that root's scopes; anything else none."""
        entry = f"iam/terraform/{self.kind}-specific/bin"
        return tuple(dict.fromkeys((self.root, entry, SHARED_BIN, self.config.modules)))

    @property
    def backend(self) -> Backend:
        return self.config.backend(self.kind, self.account, self.environment.name if self.environment else None)

    @property
    def parameter(self) -> str:
        """The SSM parameter of the applied record."""
        return self.config.record_parameter(self.name)

    def tf_vars(self) -> dict[str, str]:
        """The root module's input variables (passed as TF_VAR_*)."""
        values = {"project": self.config.project, "account_id": self.account.id, "region": self.account.region}
        if self.environment:
            values["environment"] = self.environment.name
        else:  # the account root also grants its read-only role the states and their digests
            b = self.backend
            values.update(deployer_vars(self.config, self.account), state_bucket=b.bucket,
                          lock_table=b.lock_table if b.uses_table else "")
        return values

    def inputs(self) -> dict[str, str]:
        """The resolved inputs that go into the fingerprint: variables plus backend names."""
        b = self.backend
        return {**self.tf_vars(), "scope": self.kind, "state_bucket": b.bucket, "state_key": b.key,
                "lock_table": b.lock_table}

    def inputs_digest(self) -> str:
        """SHA-256 (64 hex) of :meth:`inputs` as canonical JSON: what the record keeps of them."""
        return _digest(self.inputs())

    def trees(self, all_trees: Mapping[str, str | None]) -> dict[str, str | None]:
        """This scope's part of *all_trees* (path -> tree id, from :func:`runbook.git.trees`)."""
        return {path: all_trees.get(path) for path in self.paths}

    def fingerprint(self, all_trees: Mapping[str, str | None]) -> str:
        """The fingerprint (64 hex) of this scope at the commit whose tree ids are *all_trees* (see the module
        docstring). Raises RunbookError (``root-module-missing``) when the commit has no root module folder."""
        trees = self.trees(all_trees)
        if not trees[self.root]:
            raise RunbookError(
                f"The {self.kind} root module folder {self.root} is not in this commit (no such folder in git)",
                id="root-module-missing", where=self.config.where("terraform", "roots", self.kind),
                fix="point the field at the root module folder, or restore it: git checkout -- iam/")
        return _digest({"format": FORMAT, "inputs": self.inputs(), "trees": trees})

    def changed(self, record: Mapping, all_trees: Mapping[str, str | None]) -> list[str]:
        """What differs between *record* (an applied record of this scope) and this commit: the paths whose
        tree id changed, and "inputs" when the configuration's inputs did. Empty when nothing can be told
        (a record of an older format names no trees)."""
        recorded = record.get("trees")
        if not isinstance(recorded, Mapping):
            return []
        found = [path for path, tree in self.trees(all_trees).items() if recorded.get(path) != tree]
        return found + (["inputs"] if record.get("inputs") != self.inputs_digest() else [])

    def command(self, via: Environment | None = None, branch: str | None = None) -> str:
        """The command an administrator runs to apply this scope: for the account scope, from *via*'s branch (or
        the checked-out *branch*'s environment in this account, or the first such environment). With *branch* (the
        one checked out where it will be pasted), prefixed with the checkout of the environment's branch when that
        is another: the IAM steps apply only from the environment's branch."""
        mine = [e for e in self.config.environments.values() if e.account == self.account]
        env = self.environment or (via if via in mine else None) or next(
            (e for e in mine if e.branch == branch), None) or next(iter(mine), None)
        command = (f"inv iam.env --name {env.name}" if self.environment else
                   f"inv iam.account --env {env.name}" if env else "inv iam.account")
        if branch is not None and env is not None and env.branch != branch:
            return f"git checkout {shlex.quote(env.branch)} && git pull --ff-only && {command}"
        return command


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def deployer_vars(config: Config, account: Account) -> dict[str, str]:
    """The account root's CI deployer inputs: ``ci_deployer`` ("oidc" or "user") and, for oidc, the
    CircleCI organization, project and repository and ``deploy_branches`` (a JSON list, as Terraform
    reads a list from TF_VAR_*: the branches of the environments in *account*, sorted)."""
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
    return all_scopes(config, environment)


def all_scopes(config: Config, only: Environment | None = None) -> list[Scope]:
    """Every scope of the configuration (or of *only* and its account): each account an environment uses,
    then each environment."""
    envs = [only] if only else list(config.environments.values())
    accounts = {e.account.name: e.account for e in envs}
    return [Scope.of_account(config, a) for a in accounts.values()] + [Scope.of_environment(config, e) for e in envs]


def account_scopes(config: Config, account: Account) -> list[Scope]:
    """Every scope whose state and record live in *account*'s AWS account (same ID and endpoint)."""
    same = [e for e in config.environments.values()
            if e.account.id == account.id and e.account.endpoint_url == account.endpoint_url]
    return [Scope.of_account(config, account)] + [Scope.of_environment(config, e) for e in same]


def environment_for(config: Config, name: str | None, branch: str | None, *, flag: str = "--env") -> Environment:
    """The environment *name*, or the one whose branch is *branch* (checked out) when *name* is None.

    *flag* is the option that names it in the calling task. Raises RunbookError when neither gives one.
    """
    if name is not None:
        return config.environment(name, flag)
    env = config.environment_for_branch(branch)
    if env is None:
        pairs = ", ".join(f"{e.name} ({e.branch})" for e in config.environments.values())
        what = (f"The checked-out branch {branch!r} is not the branch of any environment" if branch else
                "HEAD is detached (no branch is checked out), so it names no environment")
        raise RunbookError(f"{what} ({pairs})", id="unknown-environment",
                           fix=f"check out an environment's branch, or name it: {flag} "
                               f"{next(iter(config.environments))}")
    return env
