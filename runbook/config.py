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
import shlex
import stat
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
    "lock": "dynamodb",
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


# Terraform's S3 backend locks state in a DynamoDB table ("dynamodb") or, from Terraform 1.10, with an S3
# object "<key>.tflock" beside the state ("s3": use_lockfile), or both at once ("dynamodb+s3": the step of a
# migration between the two in which every run takes both locks). Source:
# https://developer.hashicorp.com/terraform/language/backend/s3#state-locking
LOCK_MODES = ("dynamodb", "s3", "dynamodb+s3")
S3_LOCK_MIN_VERSION = "1.10.0"


@dataclass(frozen=True)
class Backend:
    """Where one root module keeps its state: S3 bucket and key, and how the state is locked.

    ``lock`` is "dynamodb" (an item of ``lock_table``), "s3" (the object ``<key>.tflock``, Terraform
    1.10+; ``lock_table`` is then neither created nor required) or "dynamodb+s3" (both: a migration step).
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


# project_slug's VCS prefix -> the host CircleCI's OIDC token names in vcs-origin.
VCS_ORIGIN_HOSTS = {"gh": "github.com", "github": "github.com", "bb": "bitbucket.org", "bitbucket": "bitbucket.org"}


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
        host = VCS_ORIGIN_HOSTS.get(vcs)
        return f"{host}/{rest}" if host else None


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
    lock_mode: str = "dynamodb"
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
                id="unknown-environment",
                where=str(self.path),
                fix=f"use one of the valid names: {', '.join(self.environments)}",
            )
        if name not in self.environments:
            close = difflib.get_close_matches(name, self.environments, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RunbookError(
                f"There is no environment {name!r}.{hint} Valid names: {', '.join(self.environments)}",
                id="unknown-environment",
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
            lock=self.lock_mode,
        )


def warnings(config: Config) -> list[str]:
    """What is valid but probably not meant, one sentence each (``inv config.check`` prints them).

    Two accounts with one ID: they are one AWS account, so their account scopes share one state
    object and one applied record, and applying one rewrites the other's. A region that the
    installed botocore does not list (a typo such as ``eu-wset-1`` passes the schema's pattern;
    a region newer than botocore would be listed too, hence a warning, not an error).
    """
    by_id: dict[str, list[Account]] = {}
    for account in config.accounts.values():
        by_id.setdefault(account.id, []).append(account)
    found = []
    for account_id, same in by_id.items():
        if len(same) > 1:
            listed = ", ".join(f"{a.name} (line {_line(config.lines, ('accounts', a.name, 'id'))})" for a in same)
            found.append(
                f"accounts {listed} in {config.path} share the ID {account_id}: they are one AWS account, so they "
                f"share one account scope (one state, one applied record {_record_of(config)}); correct the ID "
                "if they are meant to be different accounts"
            )
    known = _known_regions()
    for account in config.accounts.values():
        if known and account.region not in known:
            close = difflib.get_close_matches(account.region, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            line = _line(config.lines, ("accounts", account.name, "region"))
            found.append(f"line {line}, field accounts.{account.name}.region: {account.region!r} is not a region "
                         f"the installed botocore knows{hint} (a region newer than the pinned botocore would "
                         "show here too)")
    return found


def _known_regions() -> set[str]:
    """The region names of every AWS partition, from botocore's own ``data/partitions.json`` (read as a
    file: building a botocore session to ask costs about half a second). Empty when it cannot be read."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("botocore")
        data = json.loads((Path(spec.origin).parent / "data" / "partitions.json").read_text(encoding="utf-8"))
        return {name for partition in data["partitions"] for name in partition.get("regions", {})}
    except (AttributeError, OSError, TypeError, ValueError, KeyError):
        return set()


def _record_of(config: Config) -> str:
    from runbook import records

    return records.parameter_name(config.project, records.ACCOUNT)


def check_roots(config: Config) -> None:
    """Raise RunbookError when a configured root module folder lies outside the repository (an absolute
    path, ``../..``, or a symbolic link that leaves it: what is applied must be what this commit holds),
    is missing, or holds no ``.tf`` file. The message names the field, its line and the fix."""
    from runbook.fingerprint import inside

    for scope, root in config.roots.items():
        line = config.lines.get(("terraform", "roots", scope))
        where = f"{config.path}" + (f" line {line}" if line else "") + f", field terraform.roots.{scope}"
        if not inside(PROJECT_ROOT, root):
            default = DEFAULTS[f"{scope}_root"]
            raise RunbookError(
                f"The {scope} root module {root} lies outside this repository ({PROJECT_ROOT}"
                + (f"; it resolves to {root.resolve()}" if root.resolve() != root.absolute() else "")
                + "): Terraform would apply files this commit does not hold, and the record would claim "
                "this commit",
                id="root-outside-repository",
                where=where,
                fix=f"set terraform.roots.{scope} to a folder inside the repository, relative to its top "
                f"(the default is {default}); copy a module kept elsewhere into the repository and commit it",
            )
        if not root.is_dir() or not any(root.glob("*.tf")):
            raise RunbookError(
                f"{root} is not a Terraform root module folder (no such folder, or no .tf file in it)",
                id="root-module-missing",
                where=where,
                fix="point the field at the root module, or restore the folder: git checkout -- iam/",
            )


def shown_path() -> str:
    """The configuration file in use, as messages outside this module name it: :func:`config_path`
    (``$RUNBOOK_CONFIG`` when set, else the default), never a hard-coded default."""
    return str(config_path())


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
    text = _read(path)
    data, lines, plain = _parse_yaml(text, path)
    problems = _schema_problems(data, lines, plain, path) or _rule_problems(data, lines, plain)
    config = None if problems else _build(data, lines, path)
    if config is not None:
        problems = _name_problems(config)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RunbookError(
            f"The configuration in {path} is not valid:\n{listing}\n",
            id="config-invalid",
            fix=f"edit {path} as each line says, then check it with `inv config.check`",
        )
    return config


MAX_BYTES = 256 * 1024
"""Largest configuration file read, in bytes (the shipped one is under 2 KB)."""
MAX_DEPTH = 16
"""Deepest nesting of YAML collections accepted (the schema needs 4)."""
MAX_ALIASES = 50
"""Most YAML aliases (``*name``) accepted in the file."""
MAX_NODES = 10_000
"""Most YAML nodes accepted once aliases are expanded (an "alias bomb" of 1 KB expands to billions)."""

_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}


def _read(path: Path) -> str:
    """The text of the configuration file *path*; refuses anything but a regular UTF-8 file of at most
    :data:`MAX_BYTES` (a FIFO would block the read forever, ``/dev/urandom`` never ends). The file is
    opened without blocking and checked with fstat before one byte is read."""
    from_env = f"{ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else None
    other = f"point {ENV_VAR} at the YAML configuration file, or unset it to use the default " \
            f"{DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise RunbookError(
            f"The configuration file {path} does not exist",
            id="config-unreadable",
            where=from_env,
            fix=f"create it from {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)}, or unset {ENV_VAR}",
        ) from None
    except OSError as exc:
        raise RunbookError(f"Cannot read the configuration file {path}: {exc.strerror}",
                           id="config-unreadable", where=from_env,
                           fix=other) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise RunbookError(f"The configuration file {path} is {kind}, not a regular file",
                               id="config-unreadable", where=from_env,
                               fix=other)
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            raise RunbookError(f"The configuration file {path} is larger than {MAX_BYTES // 1024} KB; a "
                               "configuration is a few KB", id="config-unreadable", where=from_env, fix=other)
    except OSError as exc:
        raise RunbookError(f"Cannot read the configuration file {path}: {exc.strerror}",
                           id="config-unreadable", where=from_env,
                           fix=other) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RunbookError(
            f"The configuration file {path} is not UTF-8 text (byte {exc.start})",
            id="config-unreadable",
            where=f"{path} line {line}",
            fix=f"save it as UTF-8{_restore(path, ' (or restore it: git checkout -- {})')}",
        ) from None


# -- YAML with line numbers ------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: nesting at most :data:`MAX_DEPTH`, at most :data:`MAX_ALIASES`
    aliases (the composer's recursion and an alias bomb both stop with a ComposerError at a line)."""

    def compose_node(self, parent, index):
        depth = getattr(self, "_depth", 0) + 1
        event = self.peek_event()
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name)",
                                                  event.start_mark)
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _restore(path: Path, template: str) -> str:
    """*template* filled with the git path of *path* when it is a file of this repository, else ""."""
    try:
        return template.format(shlex.quote(str(Path(path).resolve().relative_to(PROJECT_ROOT))))
    except ValueError:
        return ""


def _yaml_error(path: Path, mark: Any, problem: str, fix: str) -> RunbookError:
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    return RunbookError(f"The configuration is not valid YAML: {problem}", id="config-not-yaml", where=where, fix=fix)


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple, int], dict[tuple, str]]:
    """Return (data, line of each path, the text as written of each unquoted scalar by path).

    Raises RunbookError at a file line for every YAML error: syntax, nesting deeper than
    :data:`MAX_DEPTH`, too many aliases or nodes, a tag (``!Ref``), a merge key (``<<``).
    """
    restore = "correct it there" + _restore(path, ", or restore the file: git checkout -- {}")
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise RunbookError(f"The configuration is not valid YAML: the character #x{exc.character:04x} is not "
                           "allowed in YAML", id="config-not-yaml", where=f"{path} line {line}", fix=restore) from None
    except yaml.YAMLError as exc:
        problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or str(exc)
        fix = "correct the indentation or quoting there (a value with ':' or '#' needs quotes)"
        if "deeper" in problem or "aliases" in problem:
            fix = restore
        raise _yaml_error(path, getattr(exc, "problem_mark", None), problem, fix) from None
    except RecursionError:
        raise RunbookError("The configuration is nested too deeply to be a configuration",
                           id="config-not-yaml", where=str(path),
                           fix=restore) from None
    if root is None:
        raise RunbookError(
            "The configuration file is empty",
            id="config-unreadable", where=str(path), fix=f"copy {DEFAULT_CONFIG.name} and edit it"
        )
    lines: dict[tuple, int] = {}
    plain: dict[tuple, str] = {}
    constructor = yaml.SafeLoader("")
    dupes: list[str] = []
    count = [0]

    def scalar(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise _yaml_error(path, node.start_mark, "a key must be plain text, not a list or mapping",
                              "write the key as text")
        if node.tag == _MERGE_TAG:
            raise _yaml_error(path, node.start_mark, "merge keys (<<: *name) are not supported here",
                              "write the keys out in full where the merge key stands")
        if node.tag.startswith("!") or not node.tag.startswith("tag:yaml.org,2002:"):
            raise _yaml_error(path, node.start_mark, f"the tag {node.tag} is not supported here: the configuration "
                              "is plain YAML (no CloudFormation tags such as !Ref)",
                              "remove the tag and write the value")
        try:
            return constructor.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError):
            raise _yaml_error(path, node.start_mark, f"{node.value!r} cannot be read as "
                              f"{node.tag.rsplit(':', 1)[-1]}", "quote the value, or correct it") from None

    inside: set[int] = set()

    def walk(node: yaml.Node, at: tuple) -> Any:
        if id(node) in inside:
            raise _yaml_error(path, node.start_mark, "an alias refers to the collection that contains it",
                              "remove the alias there")
        count[0] += 1
        if count[0] > MAX_NODES:
            raise _yaml_error(path, node.start_mark, f"more than {MAX_NODES} values once aliases are expanded "
                              "(an alias bomb?)", restore)
        lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise _yaml_error(path, node.start_mark, f"the tag {node.tag} is not supported here",
                                  "remove the tag")
            out: dict[Any, Any] = {}
            inside.add(id(node))
            for key_node, value_node in node.value:
                key = scalar(key_node)
                if not isinstance(key, str):
                    raise RunbookError(
                        f"Key {key_node.value} "
                        f"is not a string (YAML reads yes/no/on/off/~ and numbers as other types)",
                        id="config-invalid",
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
            inside.discard(id(node))
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise _yaml_error(path, node.start_mark, f"the tag {node.tag} is not supported here",
                                  "remove the tag")
            inside.add(id(node))
            items = [walk(item, at + (i,)) for i, item in enumerate(node.value)]
            inside.discard(id(node))
            return items
        if node.style is None:
            plain[at] = node.value
        return scalar(node)

    try:
        data = walk(root, ())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _yaml_error(path, getattr(exc, "problem_mark", None), problem,
                          "quote the value there, or write it another way") from None
    except RecursionError:
        raise RunbookError("The configuration is nested too deeply to be a configuration",
                           id="config-not-yaml", where=str(path),
                           fix=restore) from None
    if dupes:
        listing = "\n".join(f"  - {d}" for d in dupes)
        raise RunbookError(
            f"The configuration in {path} has duplicate keys:\n{listing}\n",
            id="config-invalid",
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
        missing = [key for key in error.validator_value if key not in (error.instance or {})]
        texts = []
        for key in missing:
            sub = (error.schema.get("properties") or {}).get(key) or {}
            texts.append(f"line {line}, field {name}: the key {key!r} is missing" + _example(key, sub))
        return line, "\n  - ".join(texts) or f"line {line}, field {name}: a required key is missing"
    schema = error.schema if isinstance(error.schema, dict) else {}
    leaf = str(at[-1]) if at else name
    value = error.instance
    if at in plain and not isinstance(value, str) and error.validator in ("type", "pattern", "minLength") \
            and "string" in _as_list(schema.get("type")):
        written = plain[at]
        return line, (f"line {line}, field {name}: {leaf}: {written} was read as {_read_as(value)}; "
                      f'write {leaf}: "{written}"')
    expected = schema.get("description")
    if error.validator == "type":
        kinds = " or ".join("true or false" if k == "boolean" else f"a {k}" for k in _as_list(error.validator_value))
        written = f"{plain[at]} (read as {_read_as(value)})" if at in plain else repr(value)
        return line, f"line {line}, field {name}: {written} should be {kinds}" + _example(leaf, schema)
    if error.validator in ("pattern", "minLength", "maxLength") and expected:
        return line, f"line {line}, field {name}: {value!r} is not {expected}" + _example(leaf, schema)
    if error.validator == "minProperties":
        return line, f"line {line}, field {name}: needs at least {error.validator_value} entry"
    return line, f"line {line}, field {name}: {error.message}"


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _example(key: str, schema: dict) -> str:
    """'; for example key: value' from the schema's ``examples``, or ''."""
    examples = schema.get("examples") or []
    if not examples:
        return ""
    example = examples[0]
    shown = json.dumps(example) if not isinstance(example, str) or not NAME_PATTERN.match(example) else example
    return f"; for example {key}: {shown}"


def _read_as(value: Any) -> str:
    """What YAML made of an unquoted value: "the number 1.1", "the boolean True", "null (no value)"."""
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return f"a {type(value).__name__} ({value})"


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
        if key == "lock":
            continue
        try:
            template.format(**sample)
        except (KeyError, IndexError, ValueError) as exc:
            line = _line(lines, ("terraform", "backend", key))
            problems.append(f"line {line}, field terraform.backend.{key}: {template!r} is not a valid name template "
                            f"({type(exc).__name__}: {exc}); placeholders are {{project}}, {{account_id}}, "
                            "{region}, {environment}")
    circleci = data.get("circleci") or {}
    if circleci.get("deployer") == "oidc" and not circleci.get("vcs_origin"):
        if CircleCI(str(circleci.get("project_slug", "")), "").repository_origin is None:
            line = _line(lines, ("circleci", "project_slug"))
            problems.append(f"line {line}, field circleci.vcs_origin: deployer oidc needs the repository as CircleCI's "
                            f"token names it (e.g. github.com/acme/acme-api); it cannot be derived from "
                            f"project_slug {circleci.get('project_slug')!r}")
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
        else:
            problems += _lock_mode_problems(backend, required, lines)
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
    """The names the runbook and the root modules build, checked against AWS's rules
    (:mod:`runbook.names`) before anything is created: the applied record's SSM parameter
    (``records.name_problem``, the rule ``records.parameter_name`` enforces), the state bucket, its
    keys and the lock table of every account and environment, and the IAM names of
    :data:`IAM_NAMES`. Each problem names the line and the field that produced the name."""
    from runbook import names, records

    lines = config.lines
    problems: dict[str, None] = {}

    def add(field: tuple, text: str) -> None:
        shown = field if field in lines else ("project",)
        problems[f"line {_line(lines, shown)}, field {_dotted(field)}: {text}"] = None

    def template_field(key: str) -> tuple:
        return ("terraform", "backend", key)

    for scope in [records.ACCOUNT, *config.environments]:
        problem = records.name_problem(config.project, scope)
        if problem:
            field, text = problem
            add(tuple(field.split(".")), text)
    built = [("account", account, None) for account in config.accounts.values()]
    built += [("environment", env.account, env.name) for env in config.environments.values()]
    states: dict[tuple[str, str], str] = {}
    for kind, account, env_name in built:
        backend = config.backend(kind, account, env_name)
        label = f"environment {env_name}" if env_name else f"the account scope of {account.name}"
        other = states.setdefault((backend.bucket, backend.key), label)
        if other != label and (env_name or not other.startswith("the account scope")):
            # two root modules on one state object would overwrite each other's state on every apply
            # (accounts that share one ID share their account scope: config.check warns about that)
            add(template_field(f"{kind}_state_key"),
                f"{label} would keep its state at s3://{backend.bucket}/{backend.key}, which is already the "
                f"state of {other}: two root modules would replace each other's state; give each scope its own "
                "key (keep {environment} in environment_state_key, and the account key apart from it)")
        for key, problem in (
            ("state_bucket", names.s3_bucket(backend.bucket)),
            ("lock_table", names.dynamodb_table(backend.lock_table)),
            (f"{kind}_state_key", names.s3_key(backend.key)),
        ):
            if problem:
                add(template_field(key), problem)
        values = {"project": config.project, "environment": env_name or ""}
        for iam_kind, template in IAM_NAMES[kind]:
            problem = names.iam_name(iam_kind, template.format(**values))
            if problem:
                field = ("environments", env_name) if env_name else ("project",)
                add(field, f"{problem}; shorten the project or environment name")
    return list(problems)


def _lock_mode_problems(backend: dict, required: str, lines: dict[tuple, int]) -> list[str]:
    """``lock: s3`` needs Terraform 1.10 or later: refuse a required_version that no such release satisfies."""
    from runbook.terraform import satisfies

    if backend.get("lock") not in ("s3", "dynamodb+s3"):
        return []
    if any(satisfies(v, required) for v in (S3_LOCK_MIN_VERSION, "1.11.4", "1.12.0", "1.14.0", "2.0.0")):
        return []
    line = _line(lines, ("terraform", "backend", "lock"))
    return [f"line {line}, field terraform.backend.lock: lock {backend.get('lock')} (S3 lock files, use_lockfile) "
            f"needs Terraform {S3_LOCK_MIN_VERSION} or later, but terraform.required_version {required!r} admits no "
            f'such release; set required_version: ">= {S3_LOCK_MIN_VERSION}", or lock: dynamodb']


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
        lock_mode=backend.get("lock", DEFAULTS["lock"]),
        roots={
            scope: _resolve_root(roots.get(scope, DEFAULTS[f"{scope}_root"]))
            for scope in ("account", "environment")
        },
        circleci=CircleCI(ci["project_slug"], ci["workflow"], ci.get("host"), ci.get("deployer", "user"),
                          ci.get("org_id"), ci.get("project_id"), ci.get("vcs_origin")) if ci else None,
        git_remote=data.get("git", {}).get("remote"),
        lines=lines,
    )


def _resolve_root(value: str) -> Path:
    """Root module paths are relative to the project root (the folder of ``tasks.py``)."""
    root = Path(value)
    return root if root.is_absolute() else PROJECT_ROOT / root
