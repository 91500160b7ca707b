"""`inv iam.status` over 12 environments (in 4 accounts) against 1 environment.

Against a moto server on 127.0.0.1, in a throwaway clone of the project; every scope has a
current record. Records of different accounts are read in parallel, so 12 environments
should cost little more than 1. Target (issue: no more race): at most 1.5 times the wall time.
Prints figures; exits 0.

    python bench/bench_status.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.project import Project, base_config  # noqa: E402

REGIONS = ["eu-west-1", "eu-west-2", "eu-central-1", "us-east-2"]


def config_with(endpoint: str, environments: int, accounts: int) -> dict:
    config = base_config(endpoint)
    # moto keeps one AWS account per access key, so the "accounts" live in different regions
    # (SSM parameters are regional): each has its own /acme-api/iam/account record.
    config["accounts"] = {
        f"acct{i}": {"id": f"{100000000000 + i}", "region": REGIONS[i], "endpoint_url": endpoint}
        for i in range(accounts)
    }
    config["environments"] = {
        f"env{i}": {"branch": f"branch-{i}", "account": f"acct{i % accounts}"} for i in range(environments)
    }
    return config


def write_current_records(project: Project, endpoint: str) -> None:
    """Record every scope as applied at this commit, the way a successful apply would."""
    import boto3

    from runbook import config as configuration
    from runbook import records, status

    cfg = configuration.load(project.path / "config" / "environments.yml")
    for scope in status.all_scopes(cfg):
        ssm = boto3.client("ssm", endpoint_url=endpoint, region_name=scope.account.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        record = records.Record.create(fingerprint=_fingerprint_in(project, scope), commit="0" * 40,
                                       branch="bench", applied_by="arn:aws:iam::1:user/bench",
                                       scope=scope.record_scope)
        records.write(ssm, cfg.project, scope.record_scope, record)


def _fingerprint_in(project: Project, scope) -> str:
    from runbook import fingerprint

    root = project.path / scope.config.roots[scope.kind].relative_to(ROOT)
    script = project.path / "iam" / "terraform" / "bin" / "deploy-app.sh"
    return fingerprint.compute(root, {"deploy-app.sh": script}, scope.inputs())


def measure(endpoint: str, env: dict, environments: int, accounts: int, runs: int) -> list[float]:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b""))
    with tempfile.TemporaryDirectory() as tmp:
        config = config_with(endpoint, environments, accounts)
        config["terraform"]["roots"] = {"account": "roots/account", "environment": "roots/environment"}
        project = Project.create(Path(tmp), env, config, branch="main")
        write_current_records(project, endpoint)
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
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_"))}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        one = measure(endpoint, env, 1, 1, args.runs)
        twelve = measure(endpoint, env, 12, 4, args.runs)
    finally:
        server.stop()
    a, b = statistics.median(one), statistics.median(twelve)
    print(f"inv iam.status,  1 environment  / 1 account : median {a:5.2f} s")
    print(f"inv iam.status, 12 environments / 4 accounts: median {b:5.2f} s")
    print(f"ratio {b / a:.2f} (target <= 1.50): {'met' if b / a <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
