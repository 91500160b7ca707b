"""Wall time that `inv iam.env` adds on top of calling deploy-app.sh directly.

Both run the same fixture root module (no provider) with real Terraform against a moto
server on 127.0.0.1, in a throwaway clone of the project with a local bare remote. Before
each run the state object, its digest and the applied record are deleted (a first apply of the
scope: a record without its state is refused), so both plan a change and apply it. The difference of
the medians is the runbook's own cost: config, git checks (with a fetch), STS, backend
look-up, plan summary. Target (issue: runbook core): under 0.8 s. Prints figures; exits 0.

    python bench/bench_overhead.py [--runs 5]
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
sys.path.insert(0, str(ROOT))

from bench.local import local_aws  # noqa: E402
from tests.project import Project, base_config  # noqa: E402

KEY = "acme-api/iam/env/stg.tfstate"
BUCKET = "acme-api-tfstate-123456789012"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with local_aws() as aws:
        endpoint, env = aws.endpoint, aws.env
        s3, ddb, ssm = aws.client("s3"), aws.client("dynamodb"), aws.client("ssm")

        def forget_state() -> None:
            """Delete the state object, its digest and the record, so the next plan has changes to apply."""
            s3.delete_object(Bucket=BUCKET, Key=KEY)
            ddb.delete_item(TableName="acme-api-tf-locks", Key={"LockID": {"S": f"{BUCKET}/{KEY}-md5"}})
            try:
                ssm.delete_parameter(Name="/acme-api/iam/env/stg")
            except ssm.exceptions.ParameterNotFound:
                pass

        with tempfile.TemporaryDirectory() as tmp:
            project = Project.create(Path(tmp), env, base_config(endpoint))
            first = project.inv("iam.env", "--name", "stg")  # creates the backend, initialises the root
            assert first.code == 0, first.all
            root = project.path / "roots" / "environment"
            script = project.path / "iam" / "terraform" / "bin" / "deploy-app.sh"
            script_env = {
                **env, "TF_STATE_BUCKET": BUCKET, "TF_STATE_KEY": KEY, "TF_LOCK_TABLE": "acme-api-tf-locks",
                "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": endpoint, "TF_VAR_project": "acme-api",
                "TF_VAR_environment": "stg", "TF_VAR_account_id": "123456789012", "TF_VAR_region": "eu-west-1",
                "TF_PLAN_FILE": ".terraform/runbook.tfplan", "TF_CLI_ARGS": "-no-color",
            }
            direct, runbook = [], []
            for _ in range(args.runs):
                forget_state()
                started = time.perf_counter()
                for mode in ("plan", "apply"):
                    done = subprocess.run(["bash", str(script)], cwd=root, env={**script_env, "DEPLOY_MODE": mode},
                                          capture_output=True, text=True)
                    assert done.returncode == 0, done.stdout + done.stderr
                direct.append(time.perf_counter() - started)
                forget_state()
                started = time.perf_counter()
                result = project.inv("iam.env", "--name", "stg")
                runbook.append(time.perf_counter() - started)
                assert result.code == 0 and "applied to environment stg" in result.out, result.all
    d, r = statistics.median(direct), statistics.median(runbook)
    print(f"deploy-app.sh plan+apply directly : median {d:6.2f} s  ({', '.join(f'{x:.2f}' for x in direct)})")
    print(f"inv iam.env --name stg            : median {r:6.2f} s  ({', '.join(f'{x:.2f}' for x in runbook)})")
    print(f"added by the runbook: {r - d:+.2f} s (target < 0.80 s): {'met' if r - d < 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
