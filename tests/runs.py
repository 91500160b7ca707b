"""Runs of ``inv`` the way a terminal or a CI runner starts them, and the backend state the lock stories set up.

:func:`start` starts ``inv`` in a session of its own with SIGHUP, SIGINT, SIGQUIT and SIGTERM at their
defaults in the child, whatever the test run itself inherited: under ``nohup`` SIGHUP is ignored, in a
background job (``cmd &``) SIGINT and SIGQUIT are, and an ignored signal stays ignored across ``exec``. The
runbook rightly keeps an ignored signal ignored, so a signal story must give ``inv`` what a terminal gives
it, not what the test runner happened to get. Its output is read as it comes (:meth:`Running.wait_for`).

The backend helpers write straight into moto what a test needs before the run (a complete backend, a lock
held by someone else, a state object), so a story does not pay for a whole ``inv`` run to set the scene.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from tests.project import ACCOUNT_ID, Project, Result

INV = str(Path(sys.executable).parent / "inv")
REGION = "eu-west-1"
BUCKET = f"acme-api-tfstate-{ACCOUNT_ID}"
TABLE = "acme-api-tf-locks"
STG_KEY = "acme-api/iam/env/stg.tfstate"
ACCOUNT_KEY = "acme-api/iam/account.tfstate"
STG_RECORD = "/acme-api/iam/env/stg"
ACCOUNT_RECORD = "/acme-api/iam/account"
_RESET = tuple(getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM") if hasattr(signal, name))


def default_signals() -> None:
    """In the child, between fork and exec: the stop signals at their defaults, as a terminal's job has them.

    Only ``signal.signal`` runs here (no import, no allocation that another thread's lock could block), which
    keeps ``preexec_fn`` safe although pytest's process runs the moto server's threads."""
    for signum in _RESET:
        signal.signal(signum, signal.SIG_DFL)


class Running:
    """A started ``inv`` (or shell): its output read as it comes, so a test can wait for a line and act."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, preexec_fn=default_signals)
        self.pid = self.proc.pid
        self._out, self._err = bytearray(), bytearray()
        self._more = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(pipe, sink), daemon=True)
                         for pipe, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, sink: bytearray) -> None:
        while chunk := pipe.read1(65536):
            with self._more:
                sink += chunk
                self._more.notify_all()
        with self._more:
            self._more.notify_all()

    @property
    def output(self) -> str:
        with self._more:
            return (self._out + self._err).decode("utf-8", "replace")

    def wait_for(self, text: str, timeout_s: float = 90) -> None:
        """Block until *text* is in the output; fail the test (with the output) if the run ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        with self._more:
            while text.encode() not in self._out + self._err:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    break
                self._more.wait(min(left, 0.2))
            else:
                return
        self.proc.kill()
        raise AssertionError(f"{text!r} never came:\n{self.finish().all}")

    def signal(self, signum: int, *, group: bool = False) -> None:
        """Send *signum* to the process, or to its whole process group (a CI runner stopping the job)."""
        import os

        if group:
            os.killpg(self.pid, signum)
        else:
            self.proc.send_signal(signum)

    def finish(self, timeout_s: float = 120) -> Result:
        """Wait for the end; exit code and output."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(10)
        return Result(code, self._out.decode("utf-8", "replace"), self._err.decode("utf-8", "replace"))


def start(project: Project, *args: str, env: dict[str, str] | None = None) -> Running:
    """``inv ARGS`` in the clone, in a session (process group) of its own, stop signals at their defaults."""
    return Running([INV, *args], cwd=project.path, env=env if env is not None else project.env)


def shell(project: Project, line: str) -> Running:
    """``bash -c LINE`` in the clone, as :func:`start` starts ``inv``."""
    return Running(["bash", "-c", line], cwd=project.path, env=project.env)


# -- moto --------------------------------------------------------------------------------------------------------


@cache
def client(endpoint: str, service: str) -> Any:
    """A boto3 client of moto at *endpoint*, with the fake credentials (one per endpoint and service)."""
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name=REGION).client(service, endpoint_url=endpoint)


def make_backend(endpoint: str, *, table: bool = True) -> None:
    """The complete backend a first deploy leaves: the state bucket (versioned, encrypted, public access blocked)
    and, unless *table* is False (S3 lock files), the lock table. A run then skips the backend step."""
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
        k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")})
    if table:
        client(endpoint, "dynamodb").create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}])


def lock_info(lock_id: str, key: str = STG_KEY, *, who: str = "alice@laptop-7", version: str = "1.0.3") -> dict:
    """Terraform's lock info (statemgr.LockInfo as JSON) of another run holding the lock of state *key*."""
    return {"ID": lock_id, "Operation": "OperationTypeApply", "Info": "", "Who": who, "Version": version,
            "Created": "2026-11-30T08:01:02.345678Z", "Path": f"{BUCKET}/{key}"}


def lock_by_someone_else(endpoint: str, lock_id: str, key: str = STG_KEY) -> dict:
    """A state lock of *key* in the lock table, as another Terraform run writes it."""
    info = lock_info(lock_id, key)
    client(endpoint, "dynamodb").put_item(TableName=TABLE, Item={"LockID": {"S": f"{BUCKET}/{key}"},
                                                                 "Info": {"S": json.dumps(info)}})
    return info


def held_locks(endpoint: str) -> list[str]:
    """The state locks in the lock table (not the state digests, which end in -md5)."""
    items = client(endpoint, "dynamodb").scan(TableName=TABLE)["Items"]
    return sorted(i["LockID"]["S"] for i in items if not i["LockID"]["S"].endswith("-md5"))


def parameters(endpoint: str) -> list[str]:
    """The names of every SSM parameter: the applied records."""
    return sorted(p["Name"] for p in client(endpoint, "ssm").describe_parameters()["Parameters"])


def record(endpoint: str, name: str = STG_RECORD) -> dict | None:
    ssm = client(endpoint, "ssm")
    try:
        return json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def state(endpoint: str, key: str = STG_KEY) -> dict | None:
    s3 = client(endpoint, "s3")
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def keys(endpoint: str) -> list[str]:
    """Every object key in the state bucket."""
    return sorted(o["Key"] for o in client(endpoint, "s3").list_objects_v2(Bucket=BUCKET).get("Contents", []))


# -- what a user must see ------------------------------------------------------------------------------------------


def assert_refused(result: Result, *needles: str) -> str:
    """A failure a user caused: non-zero exit, no traceback, one paragraph ``ERROR [id]: ... Fix: ...`` naming the
    fix, and every needle in the output. Returns the text after ``Fix: ``."""
    assert result.code != 0, result.all
    assert "Traceback" not in result.all, result.all
    paragraphs = re.findall(r"^ERROR \[[a-z0-9-]+\]: (.*?)\nSee TROUBLESHOOTING\.md#", result.err, re.M | re.S)
    assert len(paragraphs) == 1, f"not exactly one error paragraph:\n{result.all}"
    assert "Fix: " in paragraphs[0], f"the error names no fix:\n{result.all}"
    for needle in needles:
        assert needle in result.all, f"{needle!r} not in:\n{result.all}"
    return paragraphs[0].split("Fix: ", 1)[1]


def snapshot_root(project: Project, scope: str = "env-stg", root: str = "roots/environment") -> Path:
    """The root module folder of *scope*'s snapshot (``runbook.snapshot.folder``): where plan and apply run."""
    import hashlib

    checkout = hashlib.sha256(str(project.path.resolve()).encode()).hexdigest()[:12]
    return Path(project.env["XDG_CACHE_HOME"]) / "runbook" / "work" / checkout / scope / root
