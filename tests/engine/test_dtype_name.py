"""`--dtype` names: a torch-free table of the names the engine runs in."""

from pathlib import Path

import pytest
import torch

from server.engine import LLMEngine, SamplingParams
from server.engine.dtype_name import DTYPE_NAMES, check_dtype_name, parse_dtype


def test_the_names_taken_are_torchs_names_of_their_dtypes() -> None:
    for name, canonical in DTYPE_NAMES.items():
        check_dtype_name(name)
        assert parse_dtype(name) is getattr(torch, name) is getattr(torch, canonical), name
        assert parse_dtype(name).is_floating_point
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("half") is torch.float16


@pytest.mark.parametrize(
    "bad", ["foo", "Tensor", "float33", "", "int8", "float8_e4m3fn", "complex64", "bool"]
)
def test_other_names_are_refused_naming_those_taken(bad: str) -> None:
    # "Tensor": torch has it, not as a dtype; int8 and the rest: torch dtypes the engine
    # cannot run in (below), refused here rather than by a model load that fails
    message = "dtype must name a torch dtype the engine runs in (float32, float, float16"
    for check in (check_dtype_name, parse_dtype):
        with pytest.raises(ValueError, match=rf"^{message}.*, got {bad!r}$".replace("(", r"\(")):
            check(bad)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.complex64])
@pytest.mark.filterwarnings("ignore:Casting complex values to real")  # complex64 on its way to failing
def test_the_engine_does_not_run_in_torch_dtypes_outside_the_table(
    tiny_llama_path: Path, dtype: torch.dtype
) -> None:
    """Why the table stops where it does: others fail as the model loads or runs."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        engine = LLMEngine.from_pretrained(str(tiny_llama_path), "cpu", dtype)
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0))
