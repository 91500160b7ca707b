"""A small on-disk cache for facts that only depend on bytes the runbook can hash.

Lives in ``$XDG_CACHE_HOME/runbook`` (default ``~/.cache/runbook``), one JSON file per
name. Every entry is keyed by something that changes whenever the answer could change (a
binary's path, size and mtime; a SHA-256 of the inputs), so an entry can never be stale, only
unused. A cache that cannot be read or written is simply empty: callers then compute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_ENTRIES = 32


def _path(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "runbook" / f"{name}.json"


def get(name: str, key: str):
    """The value cached under *key* in cache *name*, or None."""
    try:
        data = json.loads(_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def put(name: str, key: str, value) -> None:
    """Store *value* (JSON-serialisable) under *key*; keeps the newest MAX_ENTRIES; never raises."""
    path = _path(name)
    try:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data.pop(key, None)
        data[key] = value
        data = dict(list(data.items())[-MAX_ENTRIES:])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
