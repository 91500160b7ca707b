"""A throwaway clone of this project, the way an administrator has one.

``Project.create`` copies the project's own files (tasks.py, runbook/, iam/,
config/) into a temporary git repository with a local bare remote, writes a
test configuration (accounts pointing at moto, fixture root modules without a
provider), commits, pushes and checks out an environment's branch. Tasks are
then run as a user runs them: ``inv ...`` in a subprocess, in that folder.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURE_ROOTS = REPO / "tests" / "fixtures" / "roots"
ACCOUNT_ID = "123456789012"
# terraform.backend.lock that base_config writes: set per test by the terraform_release fixture (conftest.py).
LOCK_MODE = "dynamodb"
# The runbook's message for a state lock taken by the very Terraform command that then could not take it
# (runbook.terraform.own_lock_age), and the release command it gives.
_OWN_LOCK = re.compile(r"by every sign by this very run.*?release the lock: inv iam\.unlock "
                       r"(--env \S+(?: --account)?|--account) --lock-id ([0-9A-Za-z-]+)", re.S)
#: Commands whose Terraform lock write was answered but the answer lost, so that the AWS SDK's second write
#: found Terraform's own lock; Project.inv released it and ran the command again (the summary lists them).
OWN_LOCKS_RELEASED: list[str] = []


def git(cwd: Path, *args: str) -> str:
    """Run git in *cwd*; fail the test with git's message when it fails."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip()


def base_config(endpoint: str | None, *, account_id: str = ACCOUNT_ID) -> dict:
    """A configuration like the shipped one, with one local account and fixture roots."""
    account = {"id": account_id, "region": "eu-west-1"}
    if endpoint:
        account["endpoint_url"] = endpoint
    return {
        "project": "acme-api",
        "accounts": {"nonprod": dict(account), "prod": dict(account)},
        "environments": {
            "dev": {"branch": "develop", "account": "nonprod"},
            "stg": {"branch": "staging", "account": "nonprod"},
            "prod": {"branch": "prod", "account": "prod", "protected": True},
        },
        "terraform": {
            "required_version": ">= 1.0.0",
            "roots": {"account": "roots/account", "environment": "roots/environment"},
            "modules": "roots/modules",
            **({"backend": {"lock": LOCK_MODE}} if LOCK_MODE != "dynamodb" else {}),
        },
        "circleci": {"project_slug": "gh/acme/acme-api", "workflow": "build-test-deploy"},
    }


@dataclass
class Result:
    """A finished ``inv`` run."""

    code: int
    out: str
    err: str

    @property
    def all(self) -> str:
        return self.out + self.err


@dataclass
class Project:
    """A clone of the project in *path* with its bare remote at *remote*."""

    path: Path
    remote: Path
    env: dict

    @classmethod
    def create(cls, tmp_path: Path, env: dict, config: dict, *, branch: str = "staging") -> Project:
        """Build the clone, commit *config* as config/environments.yml, push main and *branch*."""
        path = tmp_path / "project"
        remote = tmp_path / "remote.git"
        path.mkdir()
        for name in ("tasks.py", ".gitignore", ".gitattributes", "runbook", "iam", "config"):
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__", ".terraform"))
            else:
                shutil.copy2(source, path / name)
        shutil.copytree(FIXTURE_ROOTS, path / "roots")
        (path / "config" / "environments.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        git(tmp_path, "init", "-q", "--bare", str(remote))
        git(path, "init", "-q", "-b", "main")
        git(path, "config", "user.email", "admin@example.com")
        git(path, "config", "user.name", "Admin")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "project")
        git(path, "remote", "add", "origin", str(remote))
        git(path, "push", "-q", "origin", "main")
        if branch != "main":
            git(path, "checkout", "-q", "-b", branch)
            git(path, "push", "-q", "-u", "origin", branch)
        return cls(path=path, remote=remote, env=env)

    def inv(self, *args: str, env: dict | None = None, input: str | None = None, timeout: float = 180) -> Result:
        """Run ``inv ARGS`` in the clone as a user would; returns exit code and output.

        Against moto, now and then Terraform's state lock write is answered but the answer never reaches
        Terraform (seen with Terraform 1.11.4 under load: moto logs the 200, Terraform's debug log shows
        the SDK writing again, and the second write finds Terraform's own lock). The runbook recognises
        that lock and names the release command; this does what it says, as an administrator would:
        ``inv iam.unlock --yes`` with that lock ID, then the same command once more. Each such release
        is listed in the session's summary, never hidden.
        """
        result = self._run(args, env=env, input=input, timeout=timeout)
        found = _OWN_LOCK.search(result.err) if result.code == 75 else None
        if found is None:
            return result
        scope, lock_id = found.groups()
        released = self._run(("iam.unlock", *shlex.split(scope), "--lock-id", lock_id, "--yes"), env=env,
                             input=None, timeout=timeout)
        assert released.code == 0, f"releasing the run's own lock failed: {released.all}"
        OWN_LOCKS_RELEASED.append(f"inv {shlex.join(args)} (lock {lock_id})")
        return self._run(args, env=env, input=input, timeout=timeout)

    def _run(self, args: tuple[str, ...], *, env: dict | None, input: str | None, timeout: float) -> Result:
        inv = str(Path(sys.executable).parent / "inv")
        done = subprocess.run(
            [inv, *args],
            cwd=self.path,
            env=env if env is not None else self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def fingerprint(self, kind: str, env_name: str = "stg", *, parts: bool = False):
        """This clone's fingerprint of a scope ("account" or "environment", of *env_name*) at HEAD, computed by the
        clone's own runbook (``Scope.fingerprint`` of HEAD's tree ids, as ``inv iam.*`` and the gate compute it);
        with *parts*, ``[fingerprint, tree ids, inputs digest]``."""
        code = (
            "import sys\n"
            "from runbook import config, records\n"
            "from runbook.scopes import Scope\n"
            "cfg = config.load()\n"
            "env = cfg.environments[sys.argv[2]]\n"
            "scope = Scope.of_environment(cfg, env) if sys.argv[1] == 'environment' else "
            "Scope.of_account(cfg, env.account)\n"
            "trees = scope.trees(records.head_trees([scope]))\n"
            "print(json.dumps([scope.fingerprint(trees), trees, scope.inputs_digest()]))\n"
        )
        done = subprocess.run([sys.executable, "-c", "import json\n" + code, kind, env_name], cwd=self.path,
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"fingerprint of {kind} {env_name} failed: {done.stderr}"
        return json.loads(done.stdout)[0] if not parts else json.loads(done.stdout)

    def write_record(self, kind: str, env_name: str = "stg", *, endpoint: str, fingerprint: str | None = None,
                     outputs: dict | None = None, branch: str | None = None) -> None:
        """Write an applied record into moto as a successful ``inv iam.*`` in this clone would.

        *kind* is "account" or "environment"; the fingerprint is this clone's own (:meth:`fingerprint`)
        unless given.
        """
        import boto3

        from runbook import config as configuration
        from runbook import records
        from runbook.scopes import Scope

        cfg = configuration.load(self.path / "config" / "environments.yml")
        env = cfg.environments[env_name]
        scope = Scope.of_environment(cfg, env) if kind == "environment" else Scope.of_account(cfg, env.account)
        ours, trees, inputs = self.fingerprint(kind, env_name, parts=True)
        record = records.Record.create(
            fingerprint=fingerprint or ours, commit=git(self.path, "rev-parse", "HEAD"), branch=branch or env.branch,
            applied_by="arn:aws:iam::123456789012:user/admin", scope=scope.name, trees=trees, inputs=inputs,
            outputs=outputs if outputs is not None else (
                {"lambda_role_names": [f"acme-api-{env_name}-lambda-api"]} if kind == "environment" else {}),
        )
        ssm = boto3.client("ssm", endpoint_url=endpoint, region_name=env.account.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        records.write(ssm, scope.parameter, record, env.account)

    def add_upstream(self, team: Path, name: str = "upstream") -> None:
        """Make *team* (a new bare repository) the team's repository, remote *name*, holding every
        branch as it is now; ``origin`` then plays the administrator's fork."""
        git(team.parent, "init", "-q", "--bare", str(team))
        git(self.path, "remote", "add", name, str(team))
        git(self.path, "push", "-q", name, "--all")
        git(self.path, "fetch", "-q", name)

    def commit_config(self, config: dict) -> None:
        """Replace the configuration, commit and push it on the current branch."""
        (self.path / "config" / "environments.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        git(self.path, "commit", "-q", "-am", "config")
        git(self.path, "push", "-q")
