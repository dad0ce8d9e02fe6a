"""Whether the server can listen where it is told, checked before anything heavy loads."""

from __future__ import annotations

import errno
import socket


def check_listen(host: str, port: int) -> None:
    """ValueError unless `host:port` can be listened on now: aiohttp binds only after the
    engines loaded, and its error there (a host that does not resolve, a port in use) was a
    traceback."""
    where = f"cannot listen on {host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # as aiohttp's server socket: a port left in TIME_WAIT by a stopped server is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # IPv6 off on this machine: asyncio skips that address too
                raise ValueError(f"{where}: {exc.strerror or exc}") from None
