"""One loopback HTTP proxy in front of the moto server: it counts a run's AWS calls, and can hold one request or
drop one answer of a real Terraform run.

Terraform runs in a process of its own, so nothing in a test can slow it down from the inside; pointing the
configuration's ``endpoint_url`` at this proxy lets a test see every AWS call of the runbook and of Terraform,
stop Terraform at a known point (while it writes the state, its state lock held) and act then (send a signal,
look at the files on disk), or lose the answer to one request (applied by moto, never heard by the caller).
Every request is forwarded unchanged to moto; moto does not check signatures, so the Host header may differ.

    with AwsProxy(moto_endpoint) as proxy:
        proxy.hold = lambda request: request.method == "PUT" and request.path.endswith(".tfstate")
        ...                 # start the run; proxy.held is set once such a request arrives and waits
        proxy.release()     # let it go on (it also goes on by itself after hold_s seconds)
        proxy.by("boto3")   # Counter of (service, action) of the runbook's own calls

Each request is noted as a :class:`Request`: the client ("boto3" for the runbook itself, "terraform" for the AWS
provider and the S3 backend, by User-Agent), the service (from the SigV4 credential scope of the Authorization
header) and the action (the ``X-Amz-Target`` of JSON protocols with the parameter or table name, the ``Action``
form field of query protocols, or method, path and query keys for S3).

Only 127.0.0.1; the server stops when the ``with`` block ends.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "proxy-authorization", "proxy-authenticate"}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@dataclass
class Request:
    """One request as the proxy saw it: method, path (with the query), headers (lower-case names), body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = field(default=None, compare=False)  # moto's answer (None: not answered yet)

    @property
    def target(self) -> str:
        """The JSON protocol's action (``X-Amz-Target``), e.g. "DynamoDB_20120810.PutItem", or ""."""
        return self.headers.get("x-amz-target", "")

    @property
    def client(self) -> str:
        """"boto3" (the runbook), "terraform" (its AWS provider and S3 backend) or "other", by User-Agent."""
        agent = self.headers.get("user-agent", "")
        if "Boto3/" in agent or "Botocore/" in agent:
            return "boto3"
        if "Terraform" in agent or "HashiCorp" in agent or "aws-sdk-go" in agent:
            return "terraform"
        return "other"

    @property
    def service(self) -> str:
        """The AWS service the request was signed for ("s3", "dynamodb", "sts", "ssm"...), "?" when unsigned."""
        found = _SCOPE.search(self.headers.get("authorization", ""))
        return found.group(1) if found else "?"

    @property
    def action(self) -> str:
        """What was asked: "GetParameter /acme-api/iam/env/stg", "PUT /bucket/key?versioning", "GetCallerIdentity"."""
        if self.target:
            try:
                fields = json.loads(self.body or b"{}")
            except ValueError:
                fields = {}
            name = next((fields[k] for k in ("Name", "TableName") if isinstance(fields, dict) and k in fields), None)
            return self.target.split(".")[-1] + (f" {name}" if name else "")
        if self.service == "s3":
            parts = urlsplit(self.path)
            query = ",".join(sorted(parse_qs(parts.query, keep_blank_values=True)))
            return f"{self.method} {parts.path}{'?' + query if query else ''}"
        form = parse_qs(self.body.decode("utf-8", "replace")) if self.body else parse_qs(urlsplit(self.path).query)
        return (form.get("Action") or ["?"])[0]


class AwsProxy:
    """Forward to *upstream* ("http://127.0.0.1:PORT" of moto), note every request, hold or drop where asked.

    Attributes:
        url: the proxy's own "http://127.0.0.1:PORT".
        requests: every request seen since the start (or :meth:`reset`), in order of arrival.
        hold: None, or a function of a Request: the requests it picks wait before they are forwarded, until
            :meth:`release` is called or ``hold_s`` seconds have passed.
        held: set as soon as a request is held (a test waits on it).
        hold_s: the longest a held request waits (a safety net: a test calls :meth:`release`).
        before: None, or a function called with every Request before it is forwarded (and before any hold).
        drop: None, or a function of a Request: the FIRST request it picks is forwarded and answered by moto,
            then its connection is closed without an answer (an answer lost on the way); ``dropped`` lists it.
        fail: None, or a function of a Request giving an HTTP status (or None): the requests it picks are answered
            with that status and an AWS JSON error (``InternalFailure``) without reaching moto; or giving
            ``(status, content type, body)``, answered as it is (an AWS error in the service's own format).
    """

    def __init__(self, upstream: str):
        parsed = urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.requests: list[Request] = []
        self.hold: Callable[[Request], bool] | None = None
        self.hold_s = 60.0
        self.held = threading.Event()
        self._released = threading.Event()
        self.before: Callable[[Request], None] | None = None
        self.drop: Callable[[Request], bool] | None = None
        self.dropped: list[Request] = []
        self.fail: Callable[[Request], int | None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def end_headers(self):
                # One request per connection: a client never reuses a connection the proxy may be closing, which
                # (seen once under heavy load) made the AWS SDK send a CreateRole moto had already answered again.
                self.send_header("Connection", "close")
                self.close_connection = True
                super().end_headers()

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
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with proxy._lock:
                    proxy.requests.append(request)
                if proxy.before is not None:
                    proxy.before(request)
                failed = proxy.fail(request) if proxy.fail is not None else None
                if failed:
                    status, kind, data = failed if isinstance(failed, tuple) else (
                        failed, "application/x-amz-json-1.1",
                        json.dumps({"__type": "InternalFailure", "message": "failed by the test"}).encode())
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if proxy.hold is not None and proxy.hold(request):
                    proxy.held.set()
                    proxy._released.wait(proxy.hold_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    request.status = answer.status
                    if proxy.drop is not None and proxy._drop_this(request):
                        self.close_connection = True  # applied by moto; the caller never hears back
                        return
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _drop_this(self, request: Request) -> bool:
        with self._lock:
            if self.dropped or not self.drop(request):
                return False
            self.dropped.append(request)
            return True

    def release(self) -> None:
        """Let the held request (and any later one ``hold`` picks) go on."""
        self._released.set()

    def reset(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.requests.clear()

    def by(self, client: str) -> Counter:
        """How often each ``(service, action)`` was asked by *client* ("boto3", "terraform")."""
        with self._lock:
            return Counter((r.service, r.action) for r in self.requests if r.client == client)

    def __enter__(self) -> AwsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()  # nothing stays held after the test
        self._server.shutdown()
        self._server.server_close()
