"""Bad configuration input ends in a message naming the file (and line), never a traceback or a hang.

Each case does what ``inv config.check`` does with the input, in-process, and bounds its time.
"""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path

import pytest

from runbook import config
from runbook.errors import RunbookError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (REPO / "config" / "environments.yml").read_text()
SECONDS = 10.0
"""What "within a few seconds" means here; ``inv config.check`` alone takes well under one."""


def check(tmp_path: Path, target: Path | str) -> tuple[int, str, float]:
    """What ``inv config.check`` does with *target*, in-process: (exit code, all output, seconds)."""
    started = time.monotonic()
    before = os.environ.get("RUNBOOK_CONFIG")
    os.environ["RUNBOOK_CONFIG"] = str(target)  # as a user points inv at it
    try:
        cfg = config.load()
        code, out = 0, "\n".join([f"{cfg.path} is valid", *config.warnings(cfg)])
    except RunbookError as exc:
        code, out = 1, exc.report()
    finally:
        os.environ.pop("RUNBOOK_CONFIG") if before is None else os.environ.update(RUNBOOK_CONFIG=before)
    return code, out, time.monotonic() - started


def refused(tmp_path: Path, target: Path | str, *needles: str) -> str:
    code, out, seconds = check(tmp_path, target)
    assert code != 0, out
    assert "Traceback" not in out and "Error:" not in out.replace("ERROR:", ""), out
    assert seconds < SECONDS, f"took {seconds:.1f} s"
    assert str(target) in out, f"the file in use is not named:\n{out}"
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.yml"
    path.write_text(text)
    return path


# -- YAML that PyYAML cannot safely turn into data ------------------------------------------------


def test_nesting_500_deep_is_refused_at_a_line(tmp_path):
    deep = SHIPPED + "extra: " + "[" * 500 + "]" * 500 + "\n"
    out = refused(tmp_path, write(tmp_path, deep), "nested deeper than", "line ")
    assert re.search(r"line \d+, column \d+", out)


def test_nesting_500_deep_in_block_style_is_refused(tmp_path):
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(500)) + "  " * 500 + "v: 1\n"
    refused(tmp_path, write(tmp_path, deep), "nested deeper than", "line ")


def test_merge_key_is_refused_at_its_line(tmp_path):
    text = SHIPPED.replace("  nonprod:\n", "  base: &b\n    region: eu-west-1\n  nonprod:\n    <<: *b\n", 1)
    line = text.splitlines().index("    <<: *b") + 1
    refused(tmp_path, write(tmp_path, text), "merge keys", f"line {line}, column")


def test_custom_tag_is_refused_at_its_line(tmp_path):
    text = SHIPPED.replace("project: acme-api ", "project: !Ref ProjectName ", 1)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "!Ref" in t)
    refused(tmp_path, write(tmp_path, text), "!Ref", f"line {line}, column")


def test_tag_on_a_mapping_is_refused(tmp_path):
    text = SHIPPED.replace("accounts:\n", "accounts: !Sub\n", 1)
    refused(tmp_path, write(tmp_path, text), "!Sub", "line ")


def test_alias_bomb_is_refused_quickly(tmp_path):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    assert len(bomb.encode()) < 1300
    refused(tmp_path, write(tmp_path, bomb), "aliases", "line ")


def test_alias_expansion_is_bounded_below_the_alias_limit(tmp_path):
    # 2 aliases per level, 20 levels: only 40 aliases, but 2**20 values once expanded.
    levels = ["l0: &l0 [x, x]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 21)]
    refused(tmp_path, write(tmp_path, "\n".join(levels) + "\n"), "alias", "line ")


@pytest.mark.parametrize("extra, needle", [
    ("when: 2024-13-45", "'2024-13-45' cannot be read as timestamp"),
    ('n: !!int "zz"', "'zz' cannot be read as int"),
    ("loop: &a [*a]", "an alias refers to the collection that contains it"),
    ("loop: &a {b: *a}", "an alias refers to the collection that contains it"),
    ("x: !!python/object:os.system {}", "is not supported here"),
    ("x: '\x01'", "the character #x0001 is not allowed"),
    ("---\nx: 1", "expected a single document"),
])
def test_values_yaml_cannot_construct_are_refused_at_their_line(tmp_path, extra, needle):
    text = SHIPPED + extra + "\n"
    refused(tmp_path, write(tmp_path, text), needle, f"line {SHIPPED.count(chr(10)) + 1}")


# -- files that are not configuration files -------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    refused(tmp_path, fifo, "FIFO", "not a regular file", "RUNBOOK_CONFIG")


def test_a_symlink_loop_is_refused_as_unreadable(tmp_path):
    (tmp_path / "a.yml").symlink_to(tmp_path / "b.yml")
    (tmp_path / "b.yml").symlink_to(tmp_path / "a.yml")  # it was a defect (pathlib's RuntimeError, exit 70)
    refused(tmp_path, tmp_path / "a.yml", "Cannot read the configuration file", "symbolic links", "RUNBOOK_CONFIG")


def test_dev_urandom_is_refused(tmp_path):
    refused(tmp_path, "/dev/urandom", "character device", "not a regular file")


def test_directory_is_refused(tmp_path):
    refused(tmp_path, tmp_path, "directory")


def test_oversized_file_is_refused(tmp_path):
    refused(tmp_path, write(tmp_path, SHIPPED + "#" * (2 * 1024 * 1024) + "\n"), "larger than")


def test_binary_file_names_its_line(tmp_path):
    path = tmp_path / "custom.yml"
    path.write_bytes(SHIPPED.encode() + b"extra: \xff\xfe\n")
    refused(tmp_path, path, "not UTF-8", f"line {SHIPPED.count(chr(10)) + 1}")


# -- messages: the field, what is expected, an example; the real file -----------------------------


def test_schema_pattern_says_field_expectation_and_example(tmp_path):
    text = SHIPPED.replace("    # endpoint_url: http://127.0.0.1:5000", "    endpoint_url: 127.0.0.1:5000")
    out = refused(tmp_path, write(tmp_path, text), "field accounts.prod.endpoint_url",
                  "'127.0.0.1:5000' is not a URL beginning with http:// or https://",
                  'for example endpoint_url: "http://127.0.0.1:5000"')
    assert "does not match" not in out


def test_yaml_implicit_number_is_quoted_as_written(tmp_path):
    text = SHIPPED.replace("branch: staging", "branch: 1.10")
    refused(tmp_path, write(tmp_path, text), 'branch: 1.10 was read as the number 1.1; write branch: "1.10"')


def test_yaml_implicit_boolean_is_quoted_as_written(tmp_path):
    text = SHIPPED.replace("branch: test", "branch: on")
    refused(tmp_path, write(tmp_path, text), 'branch: on was read as the boolean True; write branch: "on"')


def test_missing_key_gives_an_example(tmp_path):
    text = SHIPPED.replace("    region: eu-west-1\n  prod:", "  prod:")
    out = refused(tmp_path, write(tmp_path, text), "field accounts.nonprod: the key 'region' is missing",
                  "for example region: eu-west-1")
    assert "is a required property" not in out


def test_where_names_the_file_in_use_not_the_default(tmp_path):
    text = SHIPPED.replace("project: acme-api", "project: awsome-api")
    out = refused(tmp_path, write(tmp_path, text), "field project")
    assert "config/environments.yml" not in out


def test_no_message_names_the_default_file_literally():
    """Messages name the configuration file in use (``config.shown_path()``): no string in the library,
    other than docstrings and ``@task(help=...)`` texts (which describe the default), spells the default."""
    offenders = []
    for source in sorted((REPO / "runbook").rglob("*.py")):
        tree = ast.parse(source.read_text())
        skip = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
            for decorator in getattr(node, "decorator_list", []):
                skip.update(id(n) for n in ast.walk(decorator))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip \
                    and "config/environments.yml" in node.value:
                offenders.append(f"{source.relative_to(REPO)}:{node.lineno}: {node.value[:80]!r}")
    assert not offenders, "\n".join(offenders)


def test_two_accounts_with_one_id_are_warned_about(tmp_path):
    text = SHIPPED.replace('id: "210987654321"', 'id: "123456789012"')
    code, out, _ = check(tmp_path, write(tmp_path, text))
    assert code == 0, out
    assert "share the ID 123456789012" in out and "nonprod" in out and "prod" in out


def test_a_region_that_does_not_exist_is_refused_with_the_close_match(tmp_path):
    text = SHIPPED.replace("region: eu-west-1\n  prod:", "region: eu-wset-1\n  prod:")
    code, out, _ = check(tmp_path, write(tmp_path, text))
    assert code == 1, out
    assert "field accounts.nonprod.region: 'eu-wset-1' is not an AWS region; did you mean 'eu-west-1'?" in out


def test_region_that_is_no_region_name_cites_the_rule(tmp_path):
    text = SHIPPED.replace("region: eu-west-1\n  prod:", "region: euwest1\n  prod:")
    refused(tmp_path, write(tmp_path, text), "'euwest1' is not an AWS region name", "for example region: eu-west-1",
            "aws-regions.html")


def test_distinct_account_ids_give_no_warning(tmp_path):
    code, out, _ = check(tmp_path, write(tmp_path, SHIPPED))
    assert code == 0, out
    assert "share the ID" not in out and "!!" not in out


@pytest.mark.parametrize("path", ["/dev/null"])
def test_empty_device_is_refused_too(tmp_path, path):
    refused(tmp_path, path, "not a regular file")
