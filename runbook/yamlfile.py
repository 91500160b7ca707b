"""A YAML file read safely, with the line of every value: what the configuration check needs to name a line.

Only a regular UTF-8 file of a few KB is read, node by node with PyYAML's safe loader
(https://pyyaml.org/wiki/PyYAMLDocumentation) under limits of depth and nodes. Every error names the file
and the line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from runbook.errors import RunbookError

MAX_BYTES = 256 * 1024
"""Largest configuration file read, in bytes (the shipped one is under 3 KB)."""
MAX_DEPTH = 16
"""Deepest nesting of YAML collections accepted (the schema needs 4)."""
MAX_NODES = 10_000
"""Most YAML nodes accepted once aliases are expanded (an "alias bomb" of 1 KB expands to billions)."""
Lines = dict[tuple, int]
Plain = dict[tuple, str]


def load(path: Path, *, source: str | None, other: str, missing: str, restore: str = "") -> tuple[Any, Lines, Plain]:
    """Read the YAML file *path*: (data, the line of each value by its path of keys, the text as written of each
    unquoted scalar by its path).

    Args:
        source: what named the file ("RUNBOOK_CONFIG=/tmp/x.yml", "--path /tmp/x.yml"), or None for the default.
        other: the fix for a file that cannot be read; *missing*: the fix for one that does not exist.
        restore: ", or restore it: git checkout -- PATH" when the file is one of the repository's.

    Raises RunbookError: ``config-unreadable`` (missing, not a regular file, too large, not UTF-8, empty),
    ``config-not-yaml`` (at a line), ``config-invalid`` (duplicate keys, a key that is not a string).
    """
    text = _read(path, source, other, missing, restore)
    try:
        return _parse(text, path, restore, missing)
    except RecursionError:
        raise RunbookError("The configuration is nested too deeply to be a configuration", id="config-not-yaml",
                           where=str(path), fix="correct it there" + restore) from None


def _read(path: Path, where: str | None, other: str, missing: str, restore: str) -> str:
    """The text of *path*, opened without blocking (a FIFO would block the read, ``/dev/urandom`` never ends) and
    checked with fstat before one byte is read."""

    def refuse(what: str, fix: str = other) -> RunbookError:
        return RunbookError(what, id="config-unreadable", where=where, fix=fix)

    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK | os.O_NOCTTY)) as stream:
            mode = os.fstat(stream.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                        stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode))
                raise refuse(f"The configuration file {path} is {kind or 'not a regular file'}, not a regular file")
            data = stream.read(MAX_BYTES + 1)  # buffered: reads until MAX_BYTES + 1 or the end
    except FileNotFoundError:
        raise refuse(f"The configuration file {path} does not exist", missing) from None
    except OSError as exc:  # a directory too (open refuses it)
        raise refuse(f"Cannot read the configuration file {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise refuse(f"The configuration file {path} is larger than {MAX_BYTES // 1024} KB; a configuration is a "
                     "few KB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunbookError(f"The configuration file {path} is not UTF-8 text (byte {exc.start})",
                           id="config-unreadable", where=f"{path} line {data.count(10, 0, exc.start) + 1}",
                           fix=f"save it as UTF-8{restore}") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with nesting at most :data:`MAX_DEPTH` (the composer's recursion stops with a
    ComposerError at a line). Aliases cost nothing here: the composer shares the node, and walking it counts."""

    def compose_node(self, parent, index):
        depth, event = getattr(self, "_depth", 0) + 1, self.peek_event()
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1


def _yaml_error(path: Path, mark: Any, problem: str, fix: str) -> RunbookError:
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    return RunbookError(f"The configuration is not valid YAML: {problem}", id="config-not-yaml", where=where, fix=fix)


def _parse(text: str, path: Path, restore: str, missing: str) -> tuple[Any, Lines, Plain]:
    restore = "correct it there" + restore
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        raise RunbookError(f"The configuration is not valid YAML: the character #x{exc.character:04x} is not "
                           "allowed in YAML", id="config-not-yaml",
                           where=f"{path} line {text[:exc.position].count(chr(10)) + 1}", fix=restore) from None
    except yaml.YAMLError as exc:
        problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or str(exc)
        limit = "deeper" in problem
        raise _yaml_error(path, getattr(exc, "problem_mark", None), problem, restore if limit else
                          "correct the indentation or quoting there (a value with ':' or '#' needs quotes)") from None
    if root is None:
        raise RunbookError("The configuration file is empty", id="config-unreadable", where=str(path), fix=missing)
    lines, plain, dupes = {}, {}, []
    constructor, inside = yaml.SafeLoader(""), set()

    def scalar(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise _yaml_error(path, node.start_mark, "a key must be plain text, not a list or mapping",
                              "write the key as text")
        if node.tag == "tag:yaml.org,2002:merge":
            raise _yaml_error(path, node.start_mark, "merge keys (<<: *name) are not supported here",
                              "write the keys out in full where the merge key stands")
        if not node.tag.startswith("tag:yaml.org,2002:"):
            raise _yaml_error(path, node.start_mark, f"the tag {node.tag} is not supported here: the configuration "
                              "is plain YAML (no CloudFormation tags such as !Ref)",
                              "remove the tag and write the value")
        try:
            return constructor.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError):
            raise _yaml_error(path, node.start_mark, f"{node.value!r} cannot be read as "
                              f"{node.tag.rsplit(':', 1)[-1]}", "quote the value, or correct it") from None

    def walk(node: yaml.Node, at: tuple) -> Any:
        if id(node) in inside:
            raise _yaml_error(path, node.start_mark, "an alias refers to the collection that contains it",
                              "remove the alias there")
        lines[at] = node.start_mark.line + 1
        if len(lines) > MAX_NODES:  # every value walked has a path of its own, aliases expanded
            raise _yaml_error(path, node.start_mark, f"more than {MAX_NODES} values once aliases are expanded "
                              "(an alias bomb?)", restore)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                raise _yaml_error(path, node.start_mark, f"the tag {node.tag} is not supported here", "remove the tag")
            inside.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                out: Any = [walk(item, at + (i,)) for i, item in enumerate(node.value)]
            else:
                out = {}
                for key_node, value_node in node.value:
                    key = scalar(key_node)
                    key_line = key_node.start_mark.line + 1
                    if not isinstance(key, str):
                        raise RunbookError(f"Key {key_node.value} is not a string (YAML reads yes/no/on/off/~ and "
                                           "numbers as other types)", id="config-invalid",
                                           where=f"{path} line {key_line}, field {dotted(at)}",
                                           fix='quote the key, e.g. "on": ..., or rename it')
                    if key in out:
                        dupes.append(f"line {key_line}, field {dotted(at + (key,))}: duplicate key (first on line "
                                     f"{lines[at + (key,)]}); YAML would silently keep only the last one")
                        continue
                    out[key] = walk(value_node, at + (key,))
                    lines[at + (key,)] = key_line
            inside.discard(id(node))
            return out
        if node.style is None:
            plain[at] = node.value
        return scalar(node)

    try:
        data = walk(root, ())
    except yaml.YAMLError as exc:
        raise _yaml_error(path, getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc),
                          "quote the value there, or write it another way") from None
    if dupes:
        raise RunbookError(f"The configuration in {path} has duplicate keys:\n" + "\n".join(f"  - {d}" for d in dupes)
                           + "\n", id="config-invalid",
                           fix=f"keep one of each in {path}, then check it with `inv config.check`")
    return data, lines, plain


def dotted(at: tuple) -> str:
    """A path of keys as the field it names: "accounts.nonprod.id"."""
    return ".".join(str(p) for p in at) or "(top level)"


def line(lines: Lines, at: tuple) -> int:
    """The line of the value at *at*, else of its nearest parent with a line, else 1."""
    while at not in lines and at:
        at = at[:-1]
    return lines.get(at, 1)
