"""A loopback HTTP proxy in front of the moto server, to hold or watch one request of a real Terraform run.

Terraform runs in a process of its own, so nothing in the test can slow it down from the inside;
pointing the configuration's ``endpoint_url`` at this proxy lets a test stop Terraform at a known
point (for instance while it writes the state, its state lock held) and act then: send a signal,
look at the files on disk. Every request is forwarded unchanged to moto; moto does not check
signatures, so the Host header may differ.

    with AwsProxy(moto_endpoint) as proxy:
        proxy.hold = lambda request: request.method == "PUT" and request.path.endswith(".tfstate")
        ...  # proxy.held is set when such a request arrives; it is forwarded after proxy.hold_s seconds

Only 127.0.0.1; the server stops when the ``with`` block ends.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate"}


@dataclass
class Request:
    """One request as the proxy saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def target(self) -> str:
        """The DynamoDB/STS-style JSON action (``X-Amz-Target``), e.g. "DynamoDB_20120810.PutItem", or ""."""
        return self.headers.get("x-amz-target", "")


class AwsProxy:
    """Forward to *upstream* ("http://127.0.0.1:PORT"); hold the requests that ``hold`` picks for ``hold_s``.

    Attributes:
        url: the proxy's own "http://127.0.0.1:PORT".
        hold: None, or a function of a Request that says whether to hold it.
        hold_s: seconds a held request waits before it is forwarded.
        held: set as soon as a request is held (a test waits on it).
        before: None, or a function called with every Request before it is forwarded.
        drop: None, or a function of a Request that says whether to close the connection, without an
            answer, once the request has been forwarded and answered by moto (an answer lost on the way).
    """

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.hold: Callable[[Request], bool] | None = None
        self.hold_s = 5.0
        self.held = threading.Event()
        self.before: Callable[[Request], None] | None = None
        self.drop: Callable[[Request], bool] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if proxy.before is not None:
                    proxy.before(request)
                if proxy.hold is not None and proxy.hold(request):
                    proxy.held.set()
                    time.sleep(proxy.hold_s)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    if proxy.drop is not None and proxy.drop(request):
                        self.close_connection = True  # applied upstream; the caller never hears back
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

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AwsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
