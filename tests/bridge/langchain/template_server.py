"""A live server whose model has a chat template of its own (for tests of templates)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from server.launcher import ServerProcess


@contextlib.contextmanager
def server_with_template(model: Path, folder: Path, template: str) -> Iterator[str]:
    """A live server of a copy of `model` (in `folder`) whose chat template is `template`."""
    copy = folder / model.name
    shutil.copytree(model, copy)
    (copy / "chat_template.jinja").write_text(template)
    with ServerProcess(copy, log_path=folder / "server.log") as srv:
        yield srv.url
