"""What `--model` may name: a registered model, a Hugging Face folder or a GGUF file."""

from __future__ import annotations

from pathlib import Path

from server.engine.registry import embedded_model, registered_names


def check_model_name(name_or_path: str | Path) -> None:
    """ValueError unless `name_or_path` is a registered name, a folder or a .gguf file."""
    if embedded_model(str(name_or_path)) is not None:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return
    if path.exists():
        raise ValueError(f"{path}: expected a model folder or a .gguf file")
    raise ValueError(
        f"no model named {str(name_or_path)!r}: not a registered name "
        f"({', '.join(registered_names())}) nor an existing folder or .gguf file"
    )
