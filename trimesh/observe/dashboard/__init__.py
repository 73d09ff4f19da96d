"""The live dashboard's static files, served by the admin listener at `/`.

The page polls `GET /v1/overview` (shape: the comment at the top of
dashboard.js, and docs/dashboard.md). Files are read through
importlib.resources, so they are found in an installed wheel as well as in a
source tree, and each is read once: the admin listener never touches disk
after the first request for it.
"""

from __future__ import annotations

import functools
from importlib import resources

# The only files served; any other name is None without touching the package.
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def asset(name: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of a dashboard file, or None if `name` is not one.

    `name` is a file name ("dashboard.js") or the request path naming it
    ("/dashboard.js"); "/" and "" are the page itself.
    """
    name = name.removeprefix("/") or "index.html"
    content_type = _TYPES.get(name)
    if content_type is None:
        return None
    return content_type, _read(name)


@functools.cache
def _read(name: str) -> bytes:
    # Cached per name; only the names in _TYPES get here, so the cache is bounded.
    return resources.files(__name__).joinpath(name).read_bytes()
