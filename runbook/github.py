"""One comment on a pull request, kept up to date: the IAM preview of the pull request's branch.

GitHub's REST API, issue comments (a pull request is an issue there):
https://docs.github.com/en/rest/issues/comments (list, create, update). The comment carries a hidden
marker, so a later run finds and edits it instead of adding another. Reads are retried (urllib3
``Retry``); the create is not, so that a lost answer can never post twice. Nothing here raises: a
comment is a courtesy, and its failure must never fail the job that runs it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from runbook import console

MARKER = "<!-- runbook:iam-preview -->"
API = "https://api.github.com"
MAX_BODY = 60000  # GitHub refuses a comment body over 65,536 characters
_PULL = re.compile(r"^https://[^/]+/([^/]+)/([^/]+)/pull/(\d+)/?$")


@dataclass(frozen=True)
class PullRequest:
    """A pull request: ``owner``, ``repo`` and its ``number``."""

    owner: str
    repo: str
    number: int

    @classmethod
    def from_url(cls, url: str) -> PullRequest | None:
        """The pull request of a web URL such as CircleCI's ``CIRCLE_PULL_REQUEST``
        (``https://github.com/acme/acme-api/pull/12``), or None for anything else."""
        found = _PULL.match(url.strip())
        return cls(found.group(1), found.group(2), int(found.group(3))) if found else None


def keep_comment(pull: PullRequest, text: str, token: str, *, api: str | None = None) -> str:
    """Create the preview comment on *pull*, or update the one a previous run made (found by :data:`MARKER`),
    with *text* (masked, cut to :data:`MAX_BODY` characters). *api*: the REST API's base URL (default
    ``$GITHUB_API_URL`` or https://api.github.com). Returns what was done ("created comment 7", "updated comment
    7"), or why nothing was ("not commented: ..."), never raising."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    base = (api or os.environ.get("GITHUB_API_URL") or API).rstrip("/")
    body = f"{MARKER}\n{console.mask(text)[:MAX_BODY]}"
    session = requests.Session()
    session.trust_env = False
    session.mount(base, HTTPAdapter(max_retries=Retry(total=3, backoff_factor=0.5, allowed_methods={"GET", "PATCH"},
                                                      status_forcelist={429, 500, 502, 503, 504},
                                                      raise_on_status=False)))
    session.headers.update({"Accept": "application/vnd.github+json", "Authorization": f"Bearer {token}",
                            "X-GitHub-Api-Version": "2022-11-28"})
    issue = f"{base}/repos/{pull.owner}/{pull.repo}/issues"
    try:
        url, mine = f"{issue}/{pull.number}/comments?per_page=100", None
        for _ in range(10):  # at most 1,000 comments: a pull request with more gets a new one
            page = session.get(url, timeout=10)
            if page.status_code != 200:
                return f"not commented: listing the comments answered HTTP {page.status_code}"
            mine = next((c for c in page.json() if isinstance(c, dict) and MARKER in str(c.get("body"))), None)
            url = page.links.get("next", {}).get("url")
            if mine or not url:
                break
        if mine:
            done = session.patch(f"{issue}/comments/{int(mine['id'])}", json={"body": body}, timeout=10)
            return f"updated comment {mine['id']}" if done.status_code == 200 else \
                f"not commented: updating comment {mine['id']} answered HTTP {done.status_code}"
        done = session.post(f"{issue}/{pull.number}/comments", json={"body": body}, timeout=10)
        return f"created comment {done.json().get('id')}" if done.status_code == 201 else \
            f"not commented: creating the comment answered HTTP {done.status_code}"
    except (requests.RequestException, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"not commented: {type(exc).__name__}"
