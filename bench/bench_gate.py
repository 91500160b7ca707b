"""Time from the applied record being written to the pipeline's gate exiting 0.

A gate (`inv ci.gate --env stg`) waits in a throwaway clone of the project against a moto
server on 127.0.0.1, with the account scope applied and the roles present; the environment
record is then written, the way a successful `inv iam.env --name stg` writes it. Target
(issue: no more race): at most one poll interval plus the settle time. Prints figures; exits 0.

    python bench/bench_gate.py [--runs 3] [--poll-s 2] [--settle-s 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.project import Project, base_config  # noqa: E402

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def record_for(project: Project, kind: str, env_name: str | None):
    from runbook import config as configuration
    from runbook import fingerprint, records
    from runbook.scopes import Scope

    cfg = configuration.load(project.path / "config" / "environments.yml")
    env = cfg.environments["stg"]
    scope = Scope.of_environment(cfg, env) if env_name else Scope.of_account(cfg, env.account)
    root = project.path / "roots" / ("environment" if env_name else "account")
    script = project.path / "iam" / "terraform" / "bin" / "deploy-app.sh"
    fp = fingerprint.compute(root, {"deploy-app.sh": script}, scope.inputs())
    outputs = {"lambda_role_names": ["acme-api-stg-lambda-api"]} if env_name else {}
    return cfg.project, scope.record_scope, records.Record.create(
        fingerprint=fp, commit="0" * 40, branch="staging", applied_by="arn:aws:iam::123456789012:user/bench",
        scope=scope.record_scope, outputs=outputs)


def one_run(endpoint: str, env: dict, poll_s: float, settle_s: float) -> float:
    import boto3

    from runbook import records

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b""))
    kw = dict(endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="testing",
              aws_secret_access_key="testing")
    ssm, iam = boto3.client("ssm", **kw), boto3.client("iam", **kw)
    iam.create_role(RoleName="acme-api-stg-lambda-api", AssumeRolePolicyDocument=TRUST)
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp), env, base_config(endpoint))
        records.write(ssm, *record_for(project, "account", None))
        gate = subprocess.Popen(
            [str(Path(sys.executable).parent / "inv"), "ci.gate", "--env", "stg", "--timeout-s", "120",
             "--poll-s", str(poll_s), "--settle-s", str(settle_s)],
            cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for line in gate.stdout:
            if "Waiting" in line:
                break
        time.sleep(poll_s / 3)  # land somewhere inside a poll interval
        records.write(ssm, *record_for(project, "environment", "stg"))
        written = time.perf_counter()
        rest = gate.stdout.read()
        code = gate.wait()
        elapsed = time.perf_counter() - written
        assert code == 0, rest
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--settle-s", type=float, default=1.0)
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
        samples = [one_run(endpoint, env, args.poll_s, args.settle_s) for _ in range(args.runs)]
    finally:
        server.stop()
    bound = args.poll_s + args.settle_s
    worst = max(samples)
    print(f"record written -> gate exit 0: {', '.join(f'{s:.2f}' for s in samples)} s "
          f"(median {statistics.median(samples):.2f} s)")
    print(f"target: at most poll ({args.poll_s:.1f} s) + settle ({args.settle_s:.1f} s) = {bound:.1f} s; "
          f"worst {worst:.2f} s: {'met' if worst <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()
