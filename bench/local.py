"""What the benchmarks share: a moto server on 127.0.0.1 and a user's environment pointed at it.

    with local_aws() as aws:
        aws.endpoint, aws.env, aws.client("s3"), aws.reset()

The server is stopped when the block ends. Only loopback addresses are used.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class LocalAws:
    """A running moto server: its URL and an environment for ``inv`` subprocesses."""

    endpoint: str
    env: dict

    def client(self, service: str, region: str = "eu-west-1"):
        """A boto3 client of *service* at the server, with the fake credentials."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def reset(self) -> None:
        """Empty every moto backend."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=10).close()


@contextmanager
def local_aws() -> Iterator[LocalAws]:
    """Start moto on a free loopback port; yield a LocalAws; stop the server afterwards."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_", "CIRCLE"))}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
                   CHECKPOINT_DISABLE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        yield LocalAws(f"http://{host}:{port}", env)
    finally:
        server.stop()
