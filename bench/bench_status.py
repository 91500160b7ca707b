"""`inv iam.status` over 12 environments (in 4 accounts) against 1 environment.

Against a moto server on 127.0.0.1, in a throwaway clone of the project; every scope has a
current record. The records are read one after another (one GetParameter each, one client per
account, every session reading botocore's data files through one loader), so 12 environments
cost little more than 1. Target (issue: no more race): at most 1.5 times the wall time.
Prints figures; exits 0.

    python bench/bench_status.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local import LocalAws, local_aws  # noqa: E402
from tests.project import Project, base_config  # noqa: E402

REGIONS = ["eu-west-1", "eu-west-2", "eu-central-1", "us-east-2"]


def config_with(endpoint: str, environments: int, accounts: int) -> dict:
    config = base_config(endpoint)
    # moto is one AWS account (123456789012) for these keys, and iam.status checks whose keys it holds, so the
    # "accounts" share its ID and live in different regions (SSM parameters are regional: each has its own
    # /acme-api/iam/account record; the state bucket names carry the region to stay apart).
    config["accounts"] = {f"acct{i}": {"id": "123456789012", "region": REGIONS[i], "endpoint_url": endpoint}
                          for i in range(accounts)}
    config["terraform"].setdefault("backend", {})["state_bucket"] = "{project}-tfstate-{account_id}-{region}"
    config["environments"] = {
        f"env{i}": {"branch": f"branch-{i}", "account": f"acct{i % accounts}"} for i in range(environments)
    }
    return config


def measure(aws: LocalAws, environments: int, accounts: int, runs: int) -> list[float]:
    aws.reset()
    with tempfile.TemporaryDirectory() as tmp:
        config = config_with(aws.endpoint, environments, accounts)
        project = Project.create(Path(tmp), aws.env, config, branch="main")
        # every scope recorded as applied at this commit, the way a successful apply records it
        for n, name in enumerate(config["environments"]):
            project.write_record("environment", name, endpoint=aws.endpoint)
            if n < accounts:
                project.write_record("account", name, endpoint=aws.endpoint)
        samples = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            result = project.inv("iam.status", "--check")
            samples.append(time.perf_counter() - started)
            assert result.code == 0, result.all
            assert result.out.count(" current ") == environments + accounts, result.out
        return samples[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with local_aws() as aws:
        one = measure(aws, 1, 1, args.runs)
        twelve = measure(aws, 12, 4, args.runs)
    a, b = statistics.median(one), statistics.median(twelve)
    print(f"inv iam.status,  1 environment  / 1 account : median {a:5.2f} s")
    print(f"inv iam.status, 12 environments / 4 accounts: median {b:5.2f} s")
    print(f"ratio {b / a:.2f} (target <= 1.50): {'met' if b / a <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
