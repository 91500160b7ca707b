"""Configuration: environments, AWS accounts, backend naming, CircleCI project.

Read from ``config/environments.yml`` (or the file named by the ``RUNBOOK_CONFIG``
environment variable), checked against ``config/environments.schema.json`` with
``jsonschema``, then against the rules a schema cannot express (an environment
naming an unknown account, two environments on one branch). Every error names
the file, the line and the field, and says how to fix it; all errors are
reported at once.

The YAML is read node by node so that line numbers survive, duplicate keys are
caught (PyYAML would silently keep the last one) and an unquoted account ID is
caught even when YAML turned it into a number (``012345678901`` loses its
leading zero).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runbook.errors import RunbookError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "environments.yml"
SCHEMA_PATH = PROJECT_ROOT / "config" / "environments.schema.json"
ENV_VAR = "RUNBOOK_CONFIG"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")

DEFAULTS: dict[str, Any] = {
    "required_version": ">= 1.0.0",
    "state_bucket": "{project}-tfstate-{account_id}",
    "lock_table": "{project}-tf-locks",
    "account_state_key": "{project}/iam/account.tfstate",
    "environment_state_key": "{project}/iam/env/{environment}.tfstate",
    "account_root": "iam/terraform/account-specific/main",
    "environment_root": "iam/terraform/environment-specific/main",
}


@dataclass(frozen=True)
class Account:
    """One AWS account: ``id`` is the 12-digit account ID as a string."""

    name: str
    id: str
    region: str
    profile: str | None = None
    endpoint_url: str | None = None


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
    """Where one root module keeps its state: S3 bucket and key, DynamoDB lock table."""

    bucket: str
    key: str
    lock_table: str
    region: str
    endpoint_url: str | None = None


@dataclass(frozen=True)
class CircleCI:
    """The CircleCI project: ``project_slug`` is opaque (``gh/org/repo`` or ``circleci/<id>/<id>``)."""

    project_slug: str
    workflow: str
    host: str | None = None


@dataclass(frozen=True)
class Config:
    """The validated configuration. Build it with :func:`load`."""

    path: Path
    project: str
    accounts: dict[str, Account]
    environments: dict[str, Environment]
    required_version: str
    backend_names: dict[str, str]
    roots: dict[str, Path]
    circleci: CircleCI | None = None
    git_remote: str | None = None  # the team's repository URL (field git.remote), see runbook.git.team_remote
    lines: dict[tuple, int] = field(default_factory=dict, repr=False, compare=False)

    def environment(self, name: str) -> Environment:
        """Return the environment called *name*.

        Raises RunbookError listing the valid names when there is none.
        """
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise RunbookError(
                f"{name!r} is not an environment name: names are lower-case letters, digits and '-', "
                f"starting with a letter. Valid names: {', '.join(self.environments)}",
                where=str(self.path),
                fix=f"use one of the valid names: {', '.join(self.environments)}",
            )
        if name not in self.environments:
            close = difflib.get_close_matches(name, self.environments, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RunbookError(
                f"There is no environment {name!r}.{hint} Valid names: {', '.join(self.environments)}",
                where=f"{self.path}, section environments",
                fix="use one of the valid names, or add the environment to that file",
            )
        return self.environments[name]

    def environment_for_branch(self, branch: str) -> Environment | None:
        """Return the environment deployed from *branch*, or None."""
        for env in self.environments.values():
            if env.branch == branch:
                return env
        return None

    def backend(self, scope: str, account: Account, environment: str | None = None) -> Backend:
        """The backend of one root module.

        Args:
            scope: "account" or "environment".
            account: the account whose S3 bucket and DynamoDB table hold the state.
            environment: environment name, required when scope is "environment".
        """
        values = {
            "project": self.project,
            "account_id": account.id,
            "region": account.region,
            "environment": environment or "",
        }
        key_template = self.backend_names[f"{scope}_state_key"]
        return Backend(
            bucket=self.backend_names["state_bucket"].format(**values),
            key=key_template.format(**values),
            lock_table=self.backend_names["lock_table"].format(**values),
            region=account.region,
            endpoint_url=account.endpoint_url,
        )


def check_roots(config: Config) -> None:
    """Raise RunbookError when a configured root module folder is missing or holds no ``.tf`` file."""
    for scope, root in config.roots.items():
        if not root.is_dir() or not any(root.glob("*.tf")):
            line = config.lines.get(("terraform", "roots", scope))
            where = f"{config.path}" + (f" line {line}" if line else "") + f", field terraform.roots.{scope}"
            raise RunbookError(
                f"{root} is not a Terraform root module folder (no such folder, or no .tf file in it)",
                where=where,
                fix="point the field at the root module, or restore the folder: git checkout -- iam/",
            )


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """The configuration file to read: *explicit*, else ``$RUNBOOK_CONFIG``, else the default."""
    chosen = explicit or os.environ.get(ENV_VAR) or DEFAULT_CONFIG
    return Path(chosen)


def load(path: str | os.PathLike | None = None) -> Config:
    """Read, validate and resolve the configuration.

    Args:
        path: YAML file; default from :func:`config_path`.

    Raises RunbookError when the file is missing, is not YAML, or breaks a rule;
    the message lists every problem with its line and field.
    """
    path = config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunbookError(
            f"The configuration file {path} does not exist",
            where=f"{ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else None,
            fix=f"create it from {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}, or unset {ENV_VAR}",
        ) from None
    except UnicodeDecodeError as exc:
        raise RunbookError(
            f"The configuration file {path} is not UTF-8 text (byte {exc.start})",
            fix="save it as UTF-8 (or restore it: git checkout -- config/environments.yml)",
        ) from None
    except OSError as exc:
        raise RunbookError(
            f"Cannot read the configuration file {path}: {exc.strerror}",
            fix=f"point {ENV_VAR} at a readable YAML file, or unset it to use the default "
            f"{DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}",
        ) from None
    data, lines, plain = _parse_yaml(text, path)
    problems = _schema_problems(data, lines, plain, path) or _rule_problems(data, lines, plain)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RunbookError(
            f"The configuration in {path} is not valid:\n{listing}\n",
            fix=f"edit {path} as each line says, then check it with `inv config.check`",
        )
    return _build(data, lines, path)


# -- YAML with line numbers ------------------------------------------------------------


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple, int], set[tuple]]:
    """Return (data, line of each path, paths whose scalar was unquoted)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RunbookError(
            f"The configuration is not valid YAML: {problem}",
            where=where,
            fix="correct the indentation or quoting there (a value with ':' or '#' needs quotes)",
        ) from None
    if root is None:
        raise RunbookError(
            "The configuration file is empty", where=str(path), fix=f"copy {DEFAULT_CONFIG.name} and edit it"
        )
    lines: dict[tuple, int] = {}
    plain: set[tuple] = set()
    constructor = yaml.SafeLoader("")
    dupes: list[str] = []

    def walk(node: yaml.Node, at: tuple) -> Any:
        lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise RunbookError(
                        f"Key {key_node.value if isinstance(key_node, yaml.ScalarNode) else '(a collection)'} "
                        f"is not a string (YAML reads yes/no/on/off/~ and numbers as other types)",
                        where=f"{path} line {key_node.start_mark.line + 1}, field {_dotted(at) or '(top level)'}",
                        fix="quote the key, e.g. \"on\": ..., or rename it",
                    )
                if key in out:
                    dupes.append(
                        f"line {key_node.start_mark.line + 1}, field {_dotted(at + (key,))}: duplicate key "
                        f"(first on line {lines[at + (key,)]}); YAML would silently keep only the last one"
                    )
                    continue
                lines[at + (key,)] = key_node.start_mark.line + 1
                out[key] = walk(value_node, at + (key,))
                lines[at + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, at + (i,)) for i, item in enumerate(node.value)]
        if node.style is None:
            plain.add(at)
        return constructor.construct_object(node, deep=True)

    try:
        data = walk(root, ())
    except RecursionError:
        raise RunbookError("The configuration is nested too deeply to be a configuration", where=str(path),
                           fix="restore it: git checkout -- config/environments.yml") from None
    if dupes:
        listing = "\n".join(f"  - {d}" for d in dupes)
        raise RunbookError(
            f"The configuration in {path} has duplicate keys:\n{listing}\n",
            fix=f"keep one of each in {path}, then check it with `inv config.check`",
        )
    return data, lines, plain


def _dotted(at: tuple) -> str:
    return ".".join(str(p) for p in at) or "(top level)"


def _line(lines: dict[tuple, int], at: tuple) -> int:
    while at not in lines and at:
        at = at[:-1]
    return lines.get(at, 1)


# -- checks ----------------------------------------------------------------------------


def _schema_problems(data: Any, lines: dict[tuple, int], plain: set[tuple], path: Path) -> list[str]:
    """jsonschema's findings, explained. A document that already passed is not validated again:
    the result is cached by the SHA-256 of the schema and the parsed document (importing
    jsonschema alone costs about 0.15 s on every command)."""
    import hashlib

    from runbook import cache

    schema_text = SCHEMA_PATH.read_text(encoding="utf-8")
    key = hashlib.sha256((schema_text + "\0" + json.dumps(data, sort_keys=True, default=repr)).encode()).hexdigest()
    if cache.get("config-valid", key):
        return []
    from jsonschema import Draft202012Validator

    problems: list[tuple[int, str]] = []
    for error in Draft202012Validator(json.loads(schema_text)).iter_errors(data):
        at = tuple(error.absolute_path)
        problems.append(_explain(error, at, data, lines, plain))
    if not problems:
        cache.put("config-valid", key, True)
    return [text for _, text in sorted(set(problems))]


def _explain(error: Any, at: tuple, data: Any, lines: dict[tuple, int], plain: set[tuple]) -> tuple[int, str]:
    line = _line(lines, at)
    name = _dotted(at)
    is_account_id = len(at) == 3 and at[0] == "accounts" and at[2] == "id"
    if is_account_id:
        value = error.instance
        if at in plain or not isinstance(value, str):
            return line, (
                f"line {line}, field {name}: the account ID must be quoted, e.g. id: \"012345678901\" "
                f"(unquoted, YAML reads {value!r} as a number and drops any leading zero)"
            )
        return line, f"line {line}, field {name}: {value!r} is not a 12-digit AWS account ID"
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extras = sorted(set(error.instance) - set(allowed), key=str)
        texts = []
        for extra in extras:
            close = difflib.get_close_matches(str(extra), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
            key_line = _line(lines, at + (extra,))
            texts.append(f"line {key_line}, field {_dotted(at + (extra,))}: unknown key{hint}")
        return _line(lines, at + (extras[0],)), "\n  - ".join(texts)
    if "propertyNames" in error.relative_schema_path:
        bad = error.instance
        key_line = _line(lines, at + (bad,))
        return key_line, (
            f"line {key_line}, field {_dotted(at + (bad,))}: {bad!r} is not a valid name: use lower-case "
            "letters, digits and '-', starting with a letter (it ends up in IAM role names and shell commands)"
        )
    if error.validator == "required":
        return line, f"line {line}, field {name}: {error.message}"
    if error.validator == "type":
        return line, f"line {line}, field {name}: {error.instance!r} should be a {error.validator_value}"
    return line, f"line {line}, field {name}: {error.message}"


def _rule_problems(data: dict, lines: dict[tuple, int], plain: set[tuple]) -> list[str]:
    problems = []
    accounts = data.get("accounts", {})
    if "account" in data.get("environments", {}):
        line = _line(lines, ("environments", "account"))
        problems.append(f"line {line}, field environments.account: 'account' is reserved (its applied record "
                        "would be the account scope's); choose another name")
    backend = (data.get("terraform") or {}).get("backend") or {}
    sample = {"project": "p", "account_id": "123456789012", "region": "eu-west-1", "environment": "stg"}
    for key, template in backend.items():
        try:
            template.format(**sample)
        except (KeyError, IndexError, ValueError) as exc:
            line = _line(lines, ("terraform", "backend", key))
            problems.append(f"line {line}, field terraform.backend.{key}: {template!r} is not a valid name template "
                            f"({type(exc).__name__}: {exc}); placeholders are {{project}}, {{account_id}}, "
                            "{region}, {environment}")
    for name, account in accounts.items():
        url = account.get("endpoint_url")
        if url and not _valid_url(url):
            line = _line(lines, ("accounts", name, "endpoint_url"))
            problems.append(f"line {line}, field accounts.{name}.endpoint_url: {url!r} is not a URL like "
                            "http://127.0.0.1:5000")
    required = (data.get("terraform") or {}).get("required_version")
    if required:
        from runbook.terraform import satisfies

        try:
            satisfies("1.0.0", required)
        except RunbookError:
            line = _line(lines, ("terraform", "required_version"))
            problems.append(f"line {line}, field terraform.required_version: {required!r} is not a Terraform "
                            'version constraint such as ">= 1.0.0" or "~> 1.0"')
    for name in accounts:
        if ("accounts", name, "id") in plain:
            line = _line(lines, ("accounts", name, "id"))
            problems.append(
                f'line {line}, field accounts.{name}.id: quote the account ID, e.g. id: "{accounts[name]["id"]}" '
                "(unquoted, YAML may read it as a number and drop a leading zero)"
            )
    branches: dict[str, str] = {}
    for name, env in data.get("environments", {}).items():
        account = env.get("account")
        if account not in accounts:
            line = _line(lines, ("environments", name, "account"))
            problems.append(
                f"line {line}, field environments.{name}.account: no account {account!r} "
                f"under accounts (known: {', '.join(accounts)})"
            )
        branch = env.get("branch")
        if branch in branches:
            line = _line(lines, ("environments", name, "branch"))
            problems.append(
                f"line {line}, field environments.{name}.branch: branch {branch!r} is already the branch of "
                f"environment {branches[branch]!r}; each environment needs its own branch"
            )
        else:
            branches[branch] = name
    return problems


def _valid_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in url and (
            parts.port is None or 0 < parts.port < 65536)
    except ValueError:
        return False


def _build(data: dict, lines: dict[tuple, int], path: Path) -> Config:
    accounts = {
        name: Account(
            name=name,
            id=a["id"],
            region=a["region"],
            profile=a.get("profile"),
            endpoint_url=a.get("endpoint_url"),
        )
        for name, a in data["accounts"].items()
    }
    environments = {
        name: Environment(
            name=name,
            branch=e["branch"],
            account=accounts[e["account"]],
            protected=bool(e.get("protected", False)),
            deploy_command=e.get("deploy_command"),
        )
        for name, e in data["environments"].items()
    }
    tf = data.get("terraform", {})
    backend = tf.get("backend", {})
    roots = tf.get("roots", {})
    ci = data.get("circleci")
    return Config(
        path=path,
        project=data["project"],
        accounts=accounts,
        environments=environments,
        required_version=tf.get("required_version", DEFAULTS["required_version"]),
        backend_names={
            key: backend.get(key, DEFAULTS[key])
            for key in ("state_bucket", "lock_table", "account_state_key", "environment_state_key")
        },
        roots={
            scope: _resolve_root(roots.get(scope, DEFAULTS[f"{scope}_root"]))
            for scope in ("account", "environment")
        },
        circleci=CircleCI(ci["project_slug"], ci["workflow"], ci.get("host")) if ci else None,
        git_remote=data.get("git", {}).get("remote"),
        lines=lines,
    )


def _resolve_root(value: str) -> Path:
    """Root module paths are relative to the project root (the folder of ``tasks.py``)."""
    root = Path(value)
    return root if root.is_absolute() else PROJECT_ROOT / root
