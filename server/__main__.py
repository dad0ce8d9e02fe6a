"""`parrot-server` / `python -m server`: serve a model over HTTP."""

from __future__ import annotations

import os
import sys

from server.config import ServerConfig
from server.engine_start import start_fork_server
from server.listen_check import check_listen


def main(argv: list[str] | None = None) -> None:
    try:
        config = ServerConfig.from_args(argv)
        check_listen(config.host, config.port)  # at once, not after seconds of imports
    except ValueError as exc:
        sys.exit(f"parrot-server: {exc}")
    # No hub downloads at run time: models are local folders, files or registered wheels.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config.engine_process:  # its imports (~2.5 s) run beside the server's own, just below
        start_fork_server()
    # after the arguments are known to be good; no torch here with engine processes (their fork
    # server imports it), else it loads with the in-process engines
    from server.app import check, run

    try:
        check(config)
        run(config)
    except ValueError as exc:  # settings the engine refuses, a model that is not there
        sys.exit(f"parrot-server: {exc}")
    except OSError as exc:  # the address was taken while the model loaded
        sys.exit(f"parrot-server: cannot listen on {config.host}:{config.port}: {exc}")


if __name__ == "__main__":
    main()
