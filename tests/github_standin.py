"""A small stand-in for GitHub's REST API issue comments (list, create, update), on 127.0.0.1.

https://docs.github.com/en/rest/issues/comments: ``GET /repos/{owner}/{repo}/issues/{number}/comments``
(paged with a ``Link: <...>; rel="next"`` header), ``POST`` to the same path (201), ``PATCH
/repos/{owner}/{repo}/issues/comments/{id}`` (200). Requests without ``Authorization: Bearer <token>`` get 401.
``fail`` maps a method to a status answered instead (a GitHub outage). Every request is noted in ``requests``.

    with GitHubStandIn(token="t") as gh:
        gh.comments[12] = [{"id": 1, "body": "LGTM"}]   # pull request 12 of acme/acme-api
        ...                                              # point GITHUB_API_URL at gh.url
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
from urllib.parse import parse_qs, urlsplit


class GitHubStandIn:
    """The comments of the pull requests of one repository (``acme/acme-api``), by pull request number."""

    def __init__(self, token: str, page_size: int = 2):
        self.token, self.page_size = token, page_size
        self.comments: dict[int, list[dict]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        ids = itertools.count(100)
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, data, headers: dict | None = None) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                                   **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                sent = json.loads(self.rfile.read(length) or b"{}")
                standin.requests.append((self.command, parts.path))
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    return self._answer(401, {"message": "Bad credentials"})
                if self.command in standin.fail:
                    return self._answer(standin.fail[self.command], {"message": "failed by the test"})
                listed = re.fullmatch(r"/repos/acme/acme-api/issues/(\d+)/comments", parts.path)
                edited = re.fullmatch(r"/repos/acme/acme-api/issues/comments/(\d+)", parts.path)
                if listed and self.command == "GET":
                    items = standin.comments.get(int(listed.group(1)), [])
                    page = int(parse_qs(parts.query).get("page", ["1"])[0])
                    size = standin.page_size
                    more = {"Link": f'<{standin.url}{parts.path}?page={page + 1}>; rel="next"'} \
                        if page * size < len(items) else {}
                    return self._answer(200, items[(page - 1) * size:page * size], more)
                if listed and self.command == "POST":
                    comment = {"id": next(ids), "body": sent["body"]}
                    standin.comments.setdefault(int(listed.group(1)), []).append(comment)
                    return self._answer(201, comment)
                if edited and self.command == "PATCH":
                    for comment in itertools.chain.from_iterable(standin.comments.values()):
                        if comment["id"] == int(edited.group(1)):
                            comment["body"] = sent["body"]
                            return self._answer(200, comment)
                return self._answer(404, {"message": "Not Found"})

            do_GET = do_POST = do_PATCH = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
