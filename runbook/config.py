"""Configuration: environments, AWS accounts, backend naming, the CircleCI project.

Read from ``config/environments.yml`` (or ``$RUNBOOK_CONFIG``) by :mod:`runbook.yamlfile`, checked against
``config/environments.schema.json``, the rules a schema cannot express and AWS's naming rules (:mod:`runbook.names`).
Every error names the file, the line, the field and the fix; all are reported at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runbook import names, versions, yamlfile
from runbook.errors import RunbookError
from runbook.yamlfile import dotted as _dotted
from runbook.yamlfile import line as _line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "environments.yml"
SCHEMA_PATH = PROJECT_ROOT / "config" / "environments.schema.json"
ENV_VAR = "RUNBOOK_CONFIG"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
ACCOUNT = "account"
"""The scope name of the account root module; every other scope is named after its environment."""

DEFAULTS: dict[str, Any] = {
    "required_version": "~> 1.0",
    "state_bucket": "{project}-tfstate-{account_id}",
    "lock_table": "{project}-tf-locks",
    "lock": "dynamodb",
    "account_state_key": "{project}/iam/account.tfstate",
    "environment_state_key": "{project}/iam/env/{environment}.tfstate",
    "account_root": "iam/terraform/account-specific/main",
    "environment_root": "iam/terraform/environment-specific/main",
    "modules": "iam/terraform/modules",
}


@dataclass(frozen=True)
class Account:
    """One AWS account: ``id`` is the 12-digit account ID as a string."""

    name: str
    id: str
    region: str
    profile: str | None = None
    endpoint_url: str | None = None

    @property
    def local(self) -> bool:
        """Whether ``endpoint_url`` is a local AWS on this machine (host ``localhost``, 127.0.0.0/8 or ``::1``):
        a rehearsal. No endpoint, or any other host, is a real AWS API."""
        host = urllib.parse.urlsplit(self.endpoint_url or "").hostname
        try:
            return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Environment:
    """One deploy environment: its git branch, its account, whether it is protected."""

    name: str
    branch: str
    account: Account
    protected: bool = False
    deploy_command: str | None = None


@dataclass(frozen=True)
class Backend:
    """Where one root module keeps its state: S3 bucket and key, and how the state is locked.

    ``lock`` is "dynamodb" (an item of ``lock_table``), "s3" (the object ``<key>.tflock``, Terraform
    1.10+; ``lock_table`` is then neither created nor required) or "dynamodb+s3" (both: a migration step).
    https://developer.hashicorp.com/terraform/language/backend/s3#state-locking
    """

    bucket: str
    key: str
    lock_table: str
    region: str
    endpoint_url: str | None = None
    lock: str = "dynamodb"

    @property
    def uses_table(self) -> bool:
        """Whether Terraform locks this state with the DynamoDB table."""
        return self.lock in ("dynamodb", "dynamodb+s3")

    @property
    def uses_lockfile(self) -> bool:
        """Whether Terraform locks this state with an S3 lock file (``use_lockfile``, Terraform 1.10+)."""
        return self.lock in ("s3", "dynamodb+s3")

    @property
    def lock_object(self) -> str:
        """The key of the S3 lock file Terraform writes in "s3" mode: ``<key>.tflock``."""
        return f"{self.key}.tflock"

    @property
    def lock_text(self) -> str:
        """The lock in words: "lock table NAME" or "lock file s3://BUCKET/KEY.tflock"."""
        parts = [f"lock table {self.lock_table}"] if self.uses_table else []
        parts += [f"lock file s3://{self.bucket}/{self.lock_object}"] if self.uses_lockfile else []
        return " and ".join(parts)


@dataclass(frozen=True)
class CircleCI:
    """The CircleCI project: ``project_slug`` is opaque (``gh/org/repo`` or ``circleci/<id>/<id>``).

    ``deployer`` is "oidc" (the pipeline assumes a role with its OpenID Connect token; needs
    ``org_id`` and ``project_id``, UUIDs) or "user" (legacy: an IAM user's access key).
    """

    project_slug: str
    workflow: str
    host: str | None = None
    deployer: str = "user"
    org_id: str | None = None
    project_id: str | None = None
    vcs_origin: str | None = None

    @property
    def repository_origin(self) -> str | None:
        """The repository as the ``vcs-origin`` part of CircleCI's OIDC ``sub`` claim names it
        (``github.com/acme/acme-api``): ``vcs_origin`` when set, else derived from a ``gh/`` or
        ``bb/`` project slug, else None. https://circleci.com/docs/openid-connect-tokens/
        """
        if self.vcs_origin:
            return self.vcs_origin
        vcs, _, rest = self.project_slug.partition("/")
        hosts = {"gh": "github.com", "github": "github.com", "bb": "bitbucket.org", "bitbucket": "bitbucket.org"}
        return f"{hosts[vcs]}/{rest}" if vcs in hosts else None


@dataclass(frozen=True)
class Config:
    """The validated configuration. Build it with :func:`load`.

    ``roots`` maps "account" and "environment" to the root module folders and ``modules`` is the shared
    modules folder, all POSIX paths relative to the top of the repository.
    """

    path: Path
    project: str
    accounts: dict[str, Account]
    environments: dict[str, Environment]
    required_version: str
    backend_names: dict[str, str]
    roots: dict[str, str]
    modules: str = DEFAULTS["modules"]
    lock_mode: str = "dynamodb"
    circleci: CircleCI | None = None
    git_remote: str | None = None  # the team's repository URL (field git.remote), see runbook.git.team_remote
    lines: dict[tuple, int] = field(default_factory=dict, repr=False, compare=False)

    def where(self, *at: str) -> str:
        """"<file> line N, field a.b.c" for the configuration field *at* (the nearest line known)."""
        return f"{self.path} {_field(self.lines, at)}"

    def environment(self, name: str, flag: str = "--env") -> Environment:
        """Return the environment called *name*. Raises RunbookError listing the valid names when there is none, its
        fix the closest one with *flag* (the option of the calling task that names it)."""
        if name in self.environments:
            return self.environments[name]
        valid = ", ".join(self.environments)
        close = difflib.get_close_matches(str(name).lower(), self.environments, n=1)
        fix = f"{flag} {close[0] if close else next(iter(self.environments))}  (the valid names: {valid})"
        if not NAME_PATTERN.match(str(name)):
            raise RunbookError(f"{name!r} is not an environment name: names are lower-case letters, digits and '-', "
                               f"starting with a letter. Valid names: {valid}", id="unknown-environment",
                               where=str(self.path), fix=fix)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RunbookError(f"There is no environment {name!r}.{hint} Valid names: {valid}",
                           id="unknown-environment", where=f"{self.path}, section environments",
                           fix=f"{fix}; or add the environment to that file")

    def environment_for_branch(self, branch: str | None) -> Environment | None:
        """Return the environment deployed from *branch*, or None."""
        return next((e for e in self.environments.values() if e.branch == branch), None)

    def backend(self, scope: str, account: Account, environment: str | None = None) -> Backend:
        """The backend of one root module: *scope* "account" or "environment" (then *environment* names it)."""
        values = {"project": self.project, "account_id": account.id, "region": account.region,
                  "environment": environment or ""}
        return Backend(bucket=self.backend_names["state_bucket"].format(**values),
                       key=self.backend_names[f"{scope}_state_key"].format(**values),
                       lock_table=self.backend_names["lock_table"].format(**values),
                       region=account.region, endpoint_url=account.endpoint_url, lock=self.lock_mode)

    def record_parameter(self, scope: str) -> str:
        """The SSM parameter that holds *scope*'s applied record ("account" or an environment name):
        ``/<project>/iam/account`` or ``/<project>/iam/env/<name>``."""
        return f"/{self.project}/iam/account" if scope == ACCOUNT else f"/{self.project}/iam/env/{scope}"


def shown_path() -> str:
    """The configuration file in use, as messages outside this module name it (never a hard-coded default)."""
    return str(Path(os.environ.get(ENV_VAR) or DEFAULT_CONFIG))


def load(path: str | os.PathLike | None = None) -> Config:
    """Read, validate and resolve the configuration.

    Args:
        path: YAML file; default ``$RUNBOOK_CONFIG``, else :data:`DEFAULT_CONFIG`.

    Raises RunbookError when the file is missing, is not YAML, or breaks a rule; the message lists
    every problem with its line and field.
    """
    explicit, path = path, Path(path or shown_path())
    default, resolved = DEFAULT_CONFIG.relative_to(PROJECT_ROOT), Path(os.path.realpath(path))  # a loop: as is
    restore = (f", or restore it: git checkout -- {resolved.relative_to(PROJECT_ROOT)}"
               if resolved.is_relative_to(PROJECT_ROOT) else "")
    source = (f"--path {explicit}" if explicit else f"{ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR)
              else None)
    data, lines, plain = yamlfile.load(
        path, source=source, restore=restore, missing=f"create it from {default}" + ("" if explicit else
        f", or unset {ENV_VAR}"), other=f"point {'--path' if explicit else ENV_VAR} at the YAML configuration file, "
        f"or use the default {default}")
    problems = _schema_problems(data, lines, plain) or _rule_problems(data, lines, plain)
    config = None if problems else _build(data, lines, path)
    problems = problems or _name_problems(config)
    if problems:
        listing = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
        raise RunbookError(f"The configuration in {path} is not valid:\n{listing}\n", id="config-invalid",
                           fix=f"edit {path} as each line says, then check it with `inv config.check"
                               f"{f' --path {shlex.quote(str(explicit))}' if explicit else ''}`")
    return config


def warnings(config: Config) -> list[str]:
    """What is valid but probably not meant, one sentence each (``inv config.check`` prints them).

    Two accounts with one ID: they are one AWS account, so their account scopes share one state
    object and one applied record.
    """
    found, by_id = [], {}
    for account in config.accounts.values():
        by_id.setdefault(account.id, []).append(account)
    for account_id, same in by_id.items():
        if len(same) > 1:
            listed = ", ".join(f"{a.name} (line {_line(config.lines, ('accounts', a.name, 'id'))})" for a in same)
            found.append(f"accounts {listed} in {config.path} share the ID {account_id}: they are one AWS account, "
                         f"so they share one account scope (one state, one applied record "
                         f"{config.record_parameter(ACCOUNT)}); correct the ID if they are meant to be different "
                         "accounts")
    return found


def _known_regions() -> set[str]:
    """The region names of every AWS partition, from botocore's own ``data/partitions.json`` (read as a
    file: building a botocore session to ask costs about half a second). Empty when it cannot be read."""
    import importlib.util

    try:
        data = json.loads((Path(importlib.util.find_spec("botocore").origin).parent / "data" / "partitions.json")
                          .read_text(encoding="utf-8"))
        return {name for partition in data["partitions"] for name in partition.get("regions", {})}
    except (AttributeError, OSError, TypeError, ValueError, KeyError):
        return set()


def _schema_problems(data: Any, lines: dict[tuple, int], plain: dict[tuple, str]) -> list[str]:
    """jsonschema's findings against ``config/environments.schema.json``, each explained at its line."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    found = {_explain(error, tuple(error.absolute_path), lines, plain) for error in validator.iter_errors(data)}
    return [text for _, text in sorted(found)]


def _explain(error: Any, at: tuple, lines: dict[tuple, int], plain: dict[tuple, str]) -> tuple[int, str]:
    if "propertyNames" in error.relative_schema_path:
        at += (error.instance,)  # a name that breaks the pattern: at its own line
    line, field, value, leaf = _line(lines, at), _field(lines, at), error.instance, str(at[-1]) if at else _dotted(at)
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = schema.get("properties") or {}
    if len(at) == 3 and at[0] == "accounts" and at[2] == "id" and not isinstance(value, str):
        return line, (f"{field}: the account ID must be quoted, e.g. id: \"012345678901\" (unquoted, YAML reads "
                      f"{value!r} as a number and drops any leading zero)")
    if error.validator == "additionalProperties":
        extras, texts = sorted(set(value) - set(known), key=str), []
        for extra in extras:
            close = difflib.get_close_matches(str(extra), sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
            texts.append(f"{_field(lines, at + (extra,))}: unknown key; {hint}")
        return _line(lines, at + (extras[0],)), "\n  - ".join(texts)
    if error.validator == "required":
        return line, "\n  - ".join(f"{field}: the key {key!r} is missing" + _example(key, known.get(key) or {})
                                   for key in error.validator_value if key not in value)
    if error.validator == "type":  # jsonschema's pattern and minLength pass any value that is not a string
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if at in plain and "string" in kinds:
            return line, f'{field}: {leaf}: {plain[at]} was read as {_read_as(value)}; write {leaf}: "{plain[at]}"'
        written = f"{plain[at]} (read as {_read_as(value)})" if at in plain else repr(value)
        kinds = " or ".join("true or false" if k == "boolean" else f"a {k}" for k in kinds)
        return line, f"{field}: {written} should be {kinds}" + _example(leaf, schema)
    if error.validator in ("pattern", "minLength", "maxLength") and schema.get("description"):
        return line, f"{field}: {_shown(value)} is not {schema['description']}" + _example(leaf, schema)
    if error.validator == "minProperties":
        return line, f"{field}: needs at least {error.validator_value} entry"
    return line, f"{field}: {error.message}"


def _example(key: str, schema: dict) -> str:
    """'; for example key: value' from the schema's ``examples``, or ''."""
    if not schema.get("examples"):
        return ""
    shown = schema["examples"][0]
    plain = isinstance(shown, str) and NAME_PATTERN.match(shown)
    return f"; for example {key}: {shown if plain else json.dumps(shown)}"


def _shown(text: str) -> str:
    """*text* quoted, or its start when it is long: a message stays one short paragraph."""
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"


def _read_as(value: Any) -> str:
    """What YAML made of an unquoted value: "the number 1.1", "the boolean True", "null (no value)"."""
    if value is None:
        return "null (no value)"
    kind = "boolean" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else None
    return f"the {kind} {value!r}" if kind else f"a {type(value).__name__} ({value})"


def _field(lines: dict[tuple, int], at: tuple) -> str:
    return f"line {_line(lines, at)}, field {_dotted(at)}"


def _rule_problems(data: dict, lines: dict[tuple, int], plain: dict[tuple, str]) -> list[str]:
    """The rules a schema cannot express, each as 'line N, field F: what is wrong'."""
    problems = []

    def add(*at: str, text: str) -> None:
        problems.append(f"{_field(lines, at)}: {text}")

    accounts, environments = data.get("accounts", {}), data.get("environments", {})
    terraform = data.get("terraform") or {}
    backend, circleci = terraform.get("backend") or {}, data.get("circleci") or {}
    if ACCOUNT in environments:
        add("environments", ACCOUNT, text="'account' is reserved (its applied record would be the account scope's); "
            "choose another name")
    slug = circleci.get("project_slug")
    if circleci.get("deployer") == "oidc" and not circleci.get("vcs_origin") \
            and CircleCI(str(slug or ""), "").repository_origin is None:
        add("circleci", "vcs_origin", text="deployer oidc needs the repository as CircleCI's token names it (e.g. "
            f"github.com/acme/acme-api); it cannot be derived from project_slug {slug!r}")
    for name, account in accounts.items():
        if ("accounts", name, "id") in plain:
            add("accounts", name, "id", text=f'quote the account ID, e.g. id: "{account["id"]}" (unquoted, YAML may '
                "read it as a number and drop a leading zero)")
    required, minimum = terraform.get("required_version", DEFAULTS["required_version"]), versions.Terraform.s3_lock_min
    problem = versions.constraint_problem(required)
    if problem:
        add("terraform", "required_version", text=problem)
    elif backend.get("lock", "dynamodb") != "dynamodb" and not any(
            versions.satisfies(v, required) for v in (minimum, "1.11.4", "1.12.0", "1.14.0", "2.0.0")):
        add("terraform", "backend", "lock", text=f"lock {backend['lock']} (S3 lock files, use_lockfile) needs "
            f"Terraform {minimum} or later, but terraform.required_version {required!r} admits no such release; set "
            f'required_version: ">= {minimum}", or lock: dynamodb')
    branches: dict[str, str] = {}
    for name, env in environments.items():
        if env.get("account") not in accounts:
            add("environments", name, "account", text=f"no account {env.get('account')!r} under accounts (known: "
                f"{', '.join(accounts)})")
        if env.get("branch") in branches:
            add("environments", name, "branch", text=f"branch {env['branch']!r} is already the branch of environment "
                f"{branches[env['branch']]!r}; each environment needs its own branch")
        branches.setdefault(env.get("branch"), name)
    return problems


IAM_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "account": (("user", "{project}-circleci-deployer"), ("policy", "{project}-circleci-deployer")),
    "environment": (("role", "{project}-{environment}-lambda-worker"),
                    ("inline policy", "{project}-{environment}-lambda-worker-inline")),
}
"""The longest IAM names the shipped root modules build from project and environment
(iam/terraform/account-specific/main/main.tf: the deployer user and policy
``${var.project}-circleci-deployer``; iam/terraform/environment-specific/main/main.tf: the roles
``${var.project}-${var.environment}-lambda-<api|worker>`` and their inline policies ``<role>-inline``).
A test reads the .tf files and fails when this table no longer matches them."""


def _name_problems(config: Config) -> list[str]:
    """The names the runbook and the root modules build, checked against AWS's rules (:mod:`runbook.names`)
    before anything is created: the applied records' SSM parameters, the state bucket, its keys and the
    lock table of every account and environment, and the IAM names of :data:`IAM_NAMES`; also two scopes
    whose state would be one object. Each problem names the line and the field that produced the name."""
    problems: list[str] = []

    def add(at: tuple, text: str) -> None:
        problems.append(f"line {_line(config.lines, at if at in config.lines else ('project',))}, field "
                        f"{_dotted(at)}: {text}")

    for scope in [ACCOUNT, *config.environments]:
        problem = names.ssm_parameter(config.record_parameter(scope))
        if problem:
            add(("project",) if scope == ACCOUNT else ("environments", scope),
                f"The {'project' if scope == ACCOUNT else 'environment'} name cannot be used in the applied record's "
                f"name: {problem}")
    known = _known_regions()
    for account in config.accounts.values():
        if known and account.region not in known:  # a typo such as eu-wset-1 passes the schema's pattern
            close = difflib.get_close_matches(account.region, sorted(known), n=1)
            add(("accounts", account.name, "region"),
                f"{account.region!r} is not an AWS region{f'; did you mean {close[0]!r}?' if close else ''} (the "
                "regions of the installed botocore; for a region newer than it: pip install -U boto3)")
    built = [("account", a, None) for a in config.accounts.values()]
    built += [("environment", e.account, e.name) for e in config.environments.values()]
    states: dict[tuple[str, str], str] = {}
    buckets: dict[str, Account] = {}
    for kind, account, env_name in built:
        backend = config.backend(kind, account, env_name)
        first = buckets.setdefault(backend.bucket, account)
        if (first.id, first.region) != (account.id, account.region):  # one name, one bucket: one account, one region
            same_id = first.id == account.id
            add(("accounts", account.name, "region") if same_id else ("terraform", "backend", "state_bucket"),
                f"the state bucket {backend.bucket} would be in {account.region} of AWS account {account.id} for "
                f"account {account.name} and in {first.region} of AWS account {first.id} for account {first.name}: "
                "S3 bucket names are global, so one of the two cannot be created or used; " +
                ("give both the same region, correct the ID, or put {region} in state_bucket" if same_id else
                 "put {account_id} in state_bucket"))
        label = f"environment {env_name}" if env_name else f"the account scope of {account.name}"
        other = states.setdefault((backend.bucket, backend.key), label)
        if other != label and (env_name or not other.startswith("the account scope")):
            add(("terraform", "backend", f"{kind}_state_key"),
                f"{label} would keep its state at s3://{backend.bucket}/{backend.key}, which is already the state of "
                f"{other}: two root modules would replace each other's state; give each scope its own key (keep "
                "{environment} in environment_state_key, and the account key apart from it)")
        for key, problem in (("state_bucket", names.s3_bucket(backend.bucket)),
                             ("lock_table", names.dynamodb_table(backend.lock_table)),
                             (f"{kind}_state_key", names.state_key(backend.key))):
            if problem:
                add(("terraform", "backend", key), problem)
        for iam_kind, template in IAM_NAMES[kind]:
            problem = names.iam_name(iam_kind, template.format(project=config.project, environment=env_name or ""))
            if problem:
                add(("environments", env_name) if env_name else ("project",),
                    f"{problem}; shorten the project or environment name")
    return problems


def _build(data: dict, lines: dict[tuple, int], path: Path) -> Config:
    # The schema's keys of an account, an environment and circleci are the fields of their dataclasses.
    accounts = {name: Account(name, **a) for name, a in data["accounts"].items()}
    environments = {name: Environment(name, **{**e, "account": accounts[e["account"]]})
                    for name, e in data["environments"].items()}
    tf = data.get("terraform", {})
    backend, roots = tf.get("backend", {}), tf.get("roots", {})
    return Config(
        path=path, project=data["project"], accounts=accounts, environments=environments,
        required_version=tf.get("required_version", DEFAULTS["required_version"]),
        backend_names={key: backend.get(key, DEFAULTS[key])
                       for key in ("state_bucket", "lock_table", "account_state_key", "environment_state_key")},
        roots={scope: PurePosixPath(roots.get(scope, DEFAULTS[f"{scope}_root"])).as_posix()
               for scope in ("account", "environment")},
        modules=PurePosixPath(tf.get("modules", DEFAULTS["modules"])).as_posix(),
        lock_mode=backend.get("lock", DEFAULTS["lock"]),
        circleci=CircleCI(**data["circleci"]) if data.get("circleci") else None,
        git_remote=data.get("git", {}).get("remote"), lines=lines)
