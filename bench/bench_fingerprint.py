"""Time the fingerprint of a scope and the snapshot its apply runs in, over a repository of 200 .tf files.

Usage: python bench/bench_fingerprint.py [--files 200] [--runs 50]

Builds a throwaway git repository with the default layout (1-8 KB .tf files, a fixed random seed: three
quarters in the environment root module, the rest in ten shared modules under iam/terraform/modules, two
of them calling a pinned registry module) and one commit. Then, per run:

- fingerprint: one ``git ls-tree`` for the tree ids of every scope's paths, then ``Scope.fingerprint``
  of each scope (the work ``inv iam.status`` and the pipeline's gate do per commit);
- snapshot: the blobs (``git ls-tree`` + ``git cat-file --batch``) of the environment scope's paths into an
  empty folder (what each real run does before planning), then the check of remote module sources
  (python-hcl2 on the files that call a remote module only).

Prints the median and 95th percentile in milliseconds. Always exits 0: it reports figures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runbook import config, git, snapshot  # noqa: E402
from runbook.scopes import all_scopes  # noqa: E402

POLICY = '''resource "aws_iam_role_policy" "p{n}" {{
  name = "${{var.project}}-${{var.environment}}-p{n}"
  role = aws_iam_role.lambda.id
  policy = jsonencode({{
    Version   = "2012-10-17"
    Statement = [{{ Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::b{n}/*"] }}]
  }})
}}
'''
REMOTE = '''module "labels" {
  source  = "cloudposse/label/null"
  version = "0.25.0"
}
'''
CONFIG = '''project: acme-api
accounts:
  nonprod: {id: "123456789012", region: eu-west-1}
environments:
  dev: {branch: develop, account: nonprod}
  stg: {branch: staging, account: nonprod}
'''


def build(top: Path, count: int) -> str:
    """Write the repository and commit it; returns the commit id."""
    rng = random.Random(7)
    env_root = top / "iam/terraform/environment-specific/main"
    for index in range(count):
        folder = env_root if index < count * 3 // 4 else top / f"iam/terraform/modules/m{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        text, n = "", 0
        while len(text) < rng.randint(1024, 8192):
            text += POLICY.format(n=f"{index}_{n}")
            n += 1
        if index >= count * 3 // 4 and index % 10 in (0, 1) and not (folder / "remote.tf").exists():
            (folder / "remote.tf").write_text(REMOTE)
        (folder / f"f{index}.tf").write_text(text)
    for path in ("iam/terraform/account-specific/main/main.tf", "iam/terraform/environment-specific/bin/deploy.sh",
                 "iam/terraform/account-specific/bin/deploy.sh"):
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        (top / path).write_text("# placeholder\n")
    (top / "iam/terraform/bin").mkdir(parents=True)
    (top / "iam/terraform/bin/deploy-app.sh").write_text("#!/usr/bin/env bash\nterraform \"$@\"\n")
    (top / "config").mkdir()
    (top / "config/environments.yml").write_text(CONFIG)
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=top, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True,
                          check=True).stdout.strip()


def figures(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(f"{name:<52} median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   ({len(ms)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "repo"
        top.mkdir()
        commit = build(top, args.files)
        cfg = config.load(top / "config/environments.yml")
        scopes = all_scopes(cfg)
        env_scope = next(s for s in scopes if s.kind == "environment")
        prints, snaps = [], []
        for run in range(args.runs):
            started = time.perf_counter()
            trees = git.trees(commit, [p for s in scopes for p in s.paths], top)
            values = [s.fingerprint(trees) for s in scopes]
            prints.append(time.perf_counter() - started)
            into = Path(tmp) / f"snap{run}"
            into.mkdir()
            started = time.perf_counter()
            git.export(commit, [p for p, t in env_scope.trees(trees).items() if t], into, top)
            taken = snapshot.Snapshot(into, into / env_scope.root, into / "iam/terraform/bin/deploy-app.sh")
            problems = snapshot.unpinned_modules(taken, env_scope)
            snaps.append(time.perf_counter() - started)
            shutil.rmtree(into)
            assert not problems and len(set(values)) == len(scopes), (problems, values)
    print(f"{args.files} .tf files; {len(scopes)} scopes ({', '.join(s.name for s in scopes)})")
    figures(f"fingerprint of all {len(scopes)} scopes (1 git call)", prints)
    figures("snapshot of one scope (blobs + source check)   ", snaps)


if __name__ == "__main__":
    main()
