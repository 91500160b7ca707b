"""How much the runbook's tasks add to Invoke's start-up: `inv --list` here vs a near-empty tasks.py.

The baseline holds one no-op task (Invoke refuses a collection with none).

Target (issue: runbook core): at most 1.3 times the empty collection, which rules out importing
boto3 (or building AWS clients) at task-load time. Prints figures; always exits 0.

    python bench/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).parent / "inv"


def timed(cwd: Path, runs: int) -> list[float]:
    samples = []
    for _ in range(runs + 2):
        started = time.perf_counter()
        subprocess.run([str(INV), "--list"], cwd=cwd, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples[2:]  # the first two warm the file cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as empty:
        (Path(empty) / "tasks.py").write_text("from invoke import task\n\n\n@task\ndef noop(c):\n    pass\n")
        base = timed(Path(empty), args.runs)
        ours = timed(ROOT, args.runs)
    b, o = statistics.median(base), statistics.median(ours)
    print(f"inv --list, one-task tasks.py: median {b * 1000:7.1f} ms  (min {min(base) * 1000:.1f})")
    print(f"inv --list, runbook tasks  : median {o * 1000:7.1f} ms  (min {min(ours) * 1000:.1f})")
    ratio = o / b
    print(f"ratio {ratio:.2f} (target <= 1.30): {'met' if ratio <= 1.3 else 'NOT met'}")
    imported = subprocess.run(
        [sys.executable, "-c", "import sys; import tasks; print('boto3' in sys.modules, 'botocore' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    print(f"boto3 imported at task-load time: {imported[0]}, botocore: {imported[1]}")


if __name__ == "__main__":
    main()
