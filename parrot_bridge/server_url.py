"""A Parrot server's root URL as the SDK and the adapters take it."""

from __future__ import annotations

API_PREFIX = "/v1"  # every route's: our clients add it to the root


def server_root(url: str, name: str) -> str:
    """`url` as the server's root: an http(s) URL, without a trailing slash, and without a
    trailing `/v1`, which OpenAI clients' base_url ends with (ChatOpenAI's users write
    http://host:9000/v1): our routes add it, and kept it made every request a 404 at
    /v1/v1/... A ValueError naming `name` for what is no http(s) URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must start with http:// or https://, got {url!r}")
    root = url.rstrip("/")
    if root.endswith(API_PREFIX):
        root = root[: -len(API_PREFIX)].rstrip("/")
    return root
