"""CircleCI API requests per `inv ci.rerun` on a healthy API, and per minute of `--wait`.

Against the CircleCI stand-in on 127.0.0.1 (it counts every request), in a throwaway clone of
the project whose IAM records are current in a moto server. Targets (issue: CircleCI from the
terminal): 3 to 4 requests per rerun (the pipelines, the workflows, the jobs that decide whether a
rerun can help, the POST); one more when the rerun POST is answered 502 after CircleCI made the new
workflow (one look at the pipeline's workflows instead of a second POST); at most 12 per minute of
watching. The watch rate is derived from the default poll interval and the requests one poll makes,
measured over a short watch at the 2 s polling floor. Prints figures; exits 0.

    python bench/bench_ci_requests.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local import local_aws  # noqa: E402
from runbook.pipeline import WATCH_POLL_S  # noqa: E402
from tests.circleci_standin import CircleCIStandIn, job  # noqa: E402
from tests.project import Project, base_config, git  # noqa: E402


def main() -> None:
    with local_aws() as aws:
        endpoint, env = aws.endpoint, aws.env
        with CircleCIStandIn(page_size=20) as ci, tempfile.TemporaryDirectory() as tmp:
            project = Project.create(Path(tmp), {**env, **ci.env()}, base_config(endpoint))
            project.write_record("account", endpoint=endpoint)
            project.write_record("environment", endpoint=endpoint)
            head = git(project.path, "rev-parse", "HEAD")
            for n in range(30):  # a busy branch: older pipelines first
                ci.add_pipeline("gh/acme/acme-api", "staging", f"{n:040x}",
                                workflows=[("build-test-deploy", "success")])
            jobs = [job("test"), job("iam-gate-stg", requires=["test"]),
                    job("deploy-stg", "failed", requires=["iam-gate-stg"])]
            ci.add_pipeline("gh/acme/acme-api", "staging", head, workflows=[("build-test-deploy", "failed", jobs)])

            ci.reset_log()
            result = project.inv("ci.rerun", "--env", "stg")
            assert result.code == 0, result.all
            rerun = ci.request_count
            calls = ", ".join(r.method + " " + r.path for r in ci.requests)
            print(f"requests per `inv ci.rerun` (healthy API): {rerun} (target 3 to 4): "
                  f"{'met' if 3 <= rerun <= 4 else 'NOT met'}  [{calls}]")

            # a failed pipeline whose rerun POST is answered 502 after CircleCI made the new workflow
            git(project.path, "commit", "-q", "--allow-empty", "-m", "gateway")
            git(project.path, "push", "-q")
            project.write_record("account", endpoint=endpoint)
            project.write_record("environment", endpoint=endpoint)
            gated = ci.add_pipeline("gh/acme/acme-api", "staging", git(project.path, "rev-parse", "HEAD"),
                                    workflows=[("build-test-deploy", "failed", jobs)])
            ci.fault("/api/v2/workflow/*/rerun", 502, method="POST", processed=True)
            ci.reset_log()
            result = project.inv("ci.rerun", "--env", "stg")
            assert result.code == 0, result.all
            made = len(gated.workflows) - 1
            gateway = ci.request_count
            print(f"requests per `inv ci.rerun` whose POST is answered 502 after CircleCI acted: {gateway} "
                  f"(target <= 5), POSTs {ci.count('POST')}, reruns made {made} (target 1): "
                  f"{'met' if gateway <= 5 and made == 1 else 'NOT met'}")

            # a second failed pipeline, rerun with --wait, the new workflow advancing on every poll
            git(project.path, "commit", "-q", "--allow-empty", "-m", "next")
            git(project.path, "push", "-q")
            project.write_record("account", endpoint=endpoint)
            project.write_record("environment", endpoint=endpoint)
            ci.add_pipeline("gh/acme/acme-api", "staging", git(project.path, "rev-parse", "HEAD"),
                            workflows=[("build-test-deploy", "failed", jobs)])
            ci.auto_advance = True
            ci.reset_log()
            result = project.inv("ci.rerun", "--env", "stg", "--wait", "--poll-s", "2")
            assert result.code == 0, result.all
            posted = next(i for i, r in enumerate(ci.requests) if r.method == "POST")
            watched = [r for r in ci.requests[posted + 1:] if r.path.startswith("/api/v2/workflow/")]
            watch = len(watched)
            polls = len([r for r in watched if not r.path.endswith("/job")])
            per_poll = watch / polls
            per_minute = per_poll * 60 / WATCH_POLL_S
            print(f"watch: {watch} requests over {polls} polls = {per_poll:.1f} per poll; at the default "
                  f"{WATCH_POLL_S:.0f} s poll that is {per_minute:.1f} per minute (target <= 12): "
                  f"{'met' if per_minute <= 12 else 'NOT met'}")


if __name__ == "__main__":
    main()
