"""The snapshot is exactly the commit's tree (real git, no AWS, no Terraform): no attribute of the commit or of the
checkout changes what arrives, and a symbolic link out of the snapshot is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runbook import git as gitlib
from runbook.errors import RunbookError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    top = tmp_path / "repo"
    (top / "root" / "bin").mkdir(parents=True)
    (top / "root" / "main.tf").write_bytes(b'# $Format:%H$\noutput "a" {\n  value = "a"\n}\n')
    (top / "root" / "extra.tf").write_text('output "extra" {\n  value = "x"\n}\n')
    (top / "root" / "bin" / "deploy.sh").write_text("#!/bin/bash\necho hi\n")
    (top / "root" / "bin" / "deploy.sh").chmod(0o755)
    (top / "root" / "inside").symlink_to("main.tf")
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "one")
    return top


def exported(repo: Path, dest: Path) -> dict[str, bytes]:
    gitlib.export(git(repo, "rev-parse", "HEAD"), ["root"], dest, repo)
    return {str(p.relative_to(dest)): (p.read_bytes() if not p.is_symlink() else b"-> " + str(p.readlink()).encode())
            for p in sorted(dest.rglob("*")) if p.is_file() or p.is_symlink()}


def committed(repo: Path) -> dict[str, bytes]:
    files = git(repo, "ls-tree", "-r", "--name-only", "HEAD", "--", "root").splitlines()
    return {name: subprocess.run(["git", "show", f"HEAD:{name}"], cwd=repo, check=True, capture_output=True).stdout
            for name in files}


def test_the_snapshot_holds_each_blob_as_committed_whatever_the_attributes_say(repo, tmp_path):
    # attributes the commit carries and attributes only this checkout has (invisible to `git status`)
    (repo / ".gitattributes").write_text("root/main.tf export-subst text eol=crlf\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-qm", "attributes")
    (repo / ".git" / "info" / "attributes").write_text("root/extra.tf export-ignore\n")
    git(repo, "config", "core.autocrlf", "true")
    got = exported(repo, tmp_path / "snap")
    expected = committed(repo)
    assert got.pop("root/inside") == b"-> main.tf"
    expected.pop("root/inside")
    assert got == expected  # extra.tf is there, $Format$ is not expanded, LF stays LF
    assert (tmp_path / "snap" / "root" / "bin" / "deploy.sh").stat().st_mode & 0o111, "the executable bit"


def test_a_symbolic_link_out_of_the_snapshot_is_refused(repo, tmp_path):
    (repo / "root" / "hostname").symlink_to("../../etc/hostname")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "out")
    with pytest.raises(RunbookError) as caught:
        exported(repo, tmp_path / "snap")
    assert caught.value.id == "reference-leaves-repository" and "root/hostname" in caught.value.what
