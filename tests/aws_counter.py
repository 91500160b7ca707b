"""A counting proxy in front of the moto server: which AWS calls a run made, and who made them.

Every request is forwarded unchanged to moto (moto does not check signatures, so the changed Host
does not matter) and noted as a :class:`Call`: the AWS service (from the SigV4 credential scope of
the Authorization header), the action (the ``X-Amz-Target`` header of JSON protocols, the
``Action`` form field of query protocols, or method and bucket path for S3) and the client (boto3
for the runbook itself, Terraform for the AWS provider and the S3 backend, by User-Agent).

Loopback only; use it as a context manager, which stops the server.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Call:
    """One AWS request: ``client`` is "boto3", "terraform" or "other"; ``action`` as described above."""

    client: str
    service: str
    action: str


class AwsCounter:
    """Forward to *upstream* (``http://127.0.0.1:PORT`` of moto) and count. ``url`` is the proxy's address."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                body = self._body()
                counter._note(self.command, self.path, self.headers, body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(counter.upstream.hostname, counter.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AwsCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _note(self, method: str, path: str, headers, body: bytes) -> None:
        agent = headers.get("User-Agent", "")
        client = "boto3" if ("Boto3/" in agent or "Botocore/" in agent) else (
            "terraform" if ("Terraform" in agent or "HashiCorp" in agent or "aws-sdk-go" in agent) else "other")
        scope = _SCOPE.search(headers.get("Authorization", ""))
        service = scope.group(1) if scope else "?"
        target = headers.get("X-Amz-Target")
        if target:
            action = target.split(".")[-1]
            try:
                fields = json.loads(body or b"{}")
            except ValueError:
                fields = {}
            name = next((fields[k] for k in ("Name", "TableName") if isinstance(fields, dict) and k in fields), None)
            action += f" {name}" if name else ""
        elif service == "s3":
            parts = urlsplit(path)
            query = ",".join(sorted(parse_qs(parts.query, keep_blank_values=True)))
            action = f"{method} {parts.path}{'?' + query if query else ''}"
        else:
            form = parse_qs(body.decode("utf-8", "replace")) if body else parse_qs(urlsplit(path).query)
            action = (form.get("Action") or ["?"])[0]
        with self._lock:
            self.calls.append(Call(client, service, action))

    def reset(self) -> None:
        """Forget the calls seen so far."""
        with self._lock:
            self.calls.clear()

    def by(self, client: str) -> Counter:
        """How often each ``(service, action)`` was called by *client*."""
        with self._lock:
            return Counter((c.service, c.action) for c in self.calls if c.client == client)
