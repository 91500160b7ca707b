"""Every error has a stable id; TROUBLESHOOTING.md has exactly one section per id, and no other.

The ids are read from the source with ``ast``: every construction of RunbookError or of a
subclass (``raise RunbookError(...)``, ``return RunbookError(...)``, ``super().__init__(...)`` in a
subclass) must name an id, or be of a subclass whose ``default_id`` names it. A section is a level-3
heading that is the id alone, in backticks (``### `state-lock-held```), so its anchor is the id on
GitHub and in any Markdown renderer, and ``TROUBLESHOOTING.md#state-lock-held`` (what the task
layer prints) opens it.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

from runbook.errors import ID_FORM, RunbookError

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "TROUBLESHOOTING.md"
SECTION = re.compile(r"^### `([^`]+)`$")
HEADING = re.compile(r"^(#{1,6}) +(.*?) *$")


def _constants(node: ast.AST | None) -> list[str] | None:
    """The string values an id argument can take: a constant, or ``a if cond else b`` of constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _constants(node.body), _constants(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def _name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def code_ids() -> tuple[dict[str, list[str]], list[str]]:
    """({id: [where it is used]}, [constructions without an id]) over runbook/."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted((REPO / "runbook").rglob("*.py"))}
    classes: dict[str, tuple[list[str], list[str] | None]] = {"RunbookError": ([], None)}  # name: (bases, default)
    own_init: set[str] = set()  # subclasses with an __init__ of their own: their super().__init__ is checked
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                default = None
                for item in node.body:
                    if (isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "default_id"
                                                             for t in item.targets)):
                        default = _constants(item.value)
                classes[node.name] = ([_name(b) for b in node.bases], default)
                if any(isinstance(item, ast.FunctionDef) and item.name == "__init__" for item in node.body):
                    own_init.add(node.name)

    def error_class(name: str | None) -> bool:
        seen = set()
        while name in classes and name not in seen:
            if name == "RunbookError":
                return True
            seen.add(name)
            name = next((b for b in classes[name][0] if b in classes), None)
        return False

    def default_of(name: str | None) -> list[str] | None:
        while name in classes and name != "RunbookError":
            if classes[name][1]:
                return classes[name][1]
            name = next((b for b in classes[name][0] if b in classes), None)
        return None

    used: dict[str, list[str]] = {}
    missing: list[str] = []
    for path, tree in trees.items():
        rel = path.relative_to(REPO)
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            if error_class(cls.name) and classes[cls.name][1]:
                for value in classes[cls.name][1]:
                    used.setdefault(value, []).append(f"{rel}:{cls.lineno} {cls.name}.default_id")
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        aliases = {}  # unknown = OutcomeUnknown if method == "POST" else RunbookError: calls to unknown count
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                leaves = [n.id for n in ast.walk(node.value) if isinstance(n, ast.Name) and error_class(n.id)]
                if leaves and isinstance(node.value, (ast.Name, ast.IfExp)):
                    aliases[node.targets[0].id] = leaves
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if name == "Failure" and len(node.args) > 1:  # a row of runbook.terraform.FAILURES: its id is the 2nd
                for value in _constants(node.args[1]) or []:
                    used.setdefault(value, []).append(f"{rel}:{node.lineno}")
                continue
            if any(k.arg == "id" and isinstance(k.value, ast.Attribute) and k.value.attr == "id"
                   and _name(k.value.value) == "row" for k in node.keywords):
                continue  # RunbookError(..., id=row.id): the table's ids are counted above
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            if name == "__init__" and isinstance(receiver, ast.Call) and _name(receiver.func) == "super":
                owner = node
                while owner in parents and not isinstance(owner, ast.ClassDef):
                    owner = parents[owner]
                name = owner.name if isinstance(owner, ast.ClassDef) else None
                if name not in classes or not error_class(classes[name][0][0] if classes[name][0] else None):
                    continue
                inherited = default_of(name)  # its own default_id, or an ancestor's
            elif name in aliases:
                defaults = [default_of(leaf) for leaf in aliases[name]]
                inherited = None if None in defaults else defaults[0]
            elif error_class(name):
                inherited = default_of(name)
                if (inherited is None and name != "RunbookError" and name in own_init
                        and not any(k.arg == "id" for k in node.keywords)):
                    continue  # e.g. GitCommandError(args, stderr): its __init__ gives the id
            else:
                continue
            given = next((k.value for k in node.keywords if k.arg == "id"), None)
            values = _constants(given) if given is not None else inherited
            if given is not None and values is None:
                missing.append(f"{rel}:{node.lineno}: the id of {name}(...) is not a string constant")
            elif values is None:
                missing.append(f"{rel}:{node.lineno}: {name}(...) without an id")
            for value in values or []:
                used.setdefault(value, []).append(f"{rel}:{node.lineno}")
    return used, missing


def doc_sections() -> list[str]:
    """The ids of TROUBLESHOOTING.md's sections, in order; fails on a level-3 heading that is not one."""
    ids, fence = [], False
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("### "):
            continue
        found = SECTION.match(line)
        assert found, f"TROUBLESHOOTING.md line {number}: a level-3 heading must be an error id in backticks: {line}"
        ids.append(found.group(1))
    return ids


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of *path*: lower case, punctuation except '-' and '_'
    dropped, spaces turned into '-', a repeated anchor suffixed -1, -2, ...
    (https://docs.github.com/en/get-started/writing-on-github/getting-started-with-writing-and-formatting-on-github/basic-writing-and-formatting-syntax#section-links)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        found = None if fence else HEADING.match(line)
        if not found:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", found.group(2)).lower()
        slug = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_error_construction_names_an_id_of_the_right_form():
    used, missing = code_ids()
    assert not missing, "\n".join(missing)
    bad = sorted(i for i in used if not ID_FORM.match(i) or len(i) > 32)
    assert not bad, f"ids must be short kebab-case: {bad}"


def test_every_id_has_exactly_one_section_and_every_section_an_id():
    used, _ = code_ids()
    sections = doc_sections()
    twice = sorted({i for i in sections if sections.count(i) > 1})
    assert not twice, f"ids with more than one section in TROUBLESHOOTING.md: {twice}"
    undocumented = sorted(set(used) - set(sections))
    assert not undocumented, "ids without a TROUBLESHOOTING.md section:\n" + "\n".join(
        f"  {i}: {', '.join(used[i][:3])}" for i in undocumented)
    orphans = sorted(set(sections) - set(used))
    assert not orphans, f"TROUBLESHOOTING.md sections whose id no code raises: {orphans}"
    assert all(i in github_anchors(DOC) for i in sections), "a section's anchor must be its id"


def test_the_table_of_contents_lists_every_section_in_order():
    text = DOC.read_text()
    contents = text.split("\n---\n", 1)[0]
    listed = re.findall(r"\[`([a-z0-9-]+)`\]\(#\1\)", contents)
    assert listed == doc_sections(), "the contents at the top of TROUBLESHOOTING.md must list every section, in order"


def test_links_into_troubleshooting_resolve():
    anchors = github_anchors(DOC)
    broken = []
    for path in [REPO / "README.md", REPO / "ARCHITECTURE.md", DOC, *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]*)\)", line):
                file, _, anchor = target.partition("#")
                if not anchor:
                    continue
                pointed = (path.parent / file).resolve() if file else path
                if pointed == DOC and anchor not in anchors:
                    broken.append(f"{path.relative_to(REPO)}:{number}: {target}")
                elif file and pointed.suffix == ".md" and pointed != DOC and pointed.exists():
                    if anchor not in github_anchors(pointed):
                        broken.append(f"{path.relative_to(REPO)}:{number}: {target}")
                elif not file and path != DOC and anchor not in github_anchors(path):
                    broken.append(f"{path.relative_to(REPO)}:{number}: {target}")
    assert not broken, "links to anchors that do not exist:\n" + "\n".join(broken)


def test_the_printed_message_shows_the_id_and_its_section():
    error = RunbookError("HEAD is 1a2b3c4d5e6f but origin/staging is 9f8e7d6c5b4a", id="head-not-on-remote",
                         where="git", fix="git pull --ff-only")
    assert error.report() == (
        "ERROR [head-not-on-remote]: HEAD is 1a2b3c4d5e6f but origin/staging is 9f8e7d6c5b4a. Where: git. "
        "Fix: git pull --ff-only\nSee TROUBLESHOOTING.md#head-not-on-remote"
    )
    assert str(error) == error.message and "head-not-on-remote" not in str(error)
