"""Inputs from `../shared/data/` (relative to the repository root), and prompt helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
# SmolLM2 tokens are about 4 characters of English text: used to size prompts without a tokenizer.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class AppShape:
    """One GPTs-style app of gpts-top4.json: token lengths and share of traffic."""

    name: str
    prompt_tokens: int
    query_tokens: int
    output_tokens: int
    share: float


def paper(index: int, data_dir: Path = DATA_DIR) -> str:
    path = data_dir / "arxiv-march-2023" / f"article_{index}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the shared arXiv data set)")
    return path.read_text()


def chunks(text: str, chunk_chars: int, count: int) -> list[str]:
    """The first `count` consecutive pieces of `text` of about `chunk_chars` each, cut at
    paragraph ends where possible."""
    if chunk_chars < 100:
        raise ValueError(f"chunk_chars must be >= 100, got {chunk_chars}")
    out: list[str] = []
    pos = 0
    while len(out) < count and pos < len(text):
        end = min(len(text), pos + chunk_chars)
        cut = text.rfind("\n\n", pos + chunk_chars // 2, end)
        end = cut if cut > 0 and end < len(text) else end
        piece = text[pos:end].strip()
        if piece:
            out.append(piece)
        pos = end
    if len(out) < count:
        raise ValueError(f"the text gives only {len(out)} chunks of {chunk_chars} chars")
    return out


def app_shapes(data_dir: Path = DATA_DIR) -> list[AppShape]:
    rows = json.loads((data_dir / "gpts-top4.json").read_text())
    return [
        AppShape(r["app_name"], r["prompt_length"], r["query_length"], r["output_length"],
                 r["percentage"])  # fmt: skip
        for r in rows
    ]


def role_prompt(role: str, data_dir: Path = DATA_DIR) -> str:
    path = data_dir / "multi-agent-roles" / f"{role}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (roles: architect, programmer, reviewer, reviser)")
    return path.read_text().strip()


def chatml(system: str, user: str, output: str) -> str:
    """A ChatML prompt (the turns of SmolLM2-Instruct) that ends with the output marker."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n{{{{output:{output}}}}}"
    )


def escape_markers(text: str) -> str:
    """Text that is safe as constant template text: `{{` cannot start a marker."""
    return text.replace("{{", "{ {").replace("}}", "} }")
