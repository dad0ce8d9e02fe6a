"""`--dtype` names: the common ones checked without torch, every other one by torch."""

import pytest
import torch

from server.engine.dtype_name import COMMON_DTYPES, check_dtype_name, parse_dtype


def test_the_names_checked_without_torch_are_torch_dtypes() -> None:
    for name in COMMON_DTYPES:
        assert isinstance(getattr(torch, name), torch.dtype), name
        check_dtype_name(name)
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("half") is torch.float16


def test_other_names_are_torchs_to_judge() -> None:
    check_dtype_name("int8")  # not a common one, but torch has it
    for bad in ("foo", "Tensor", "float33", ""):  # "Tensor": torch has it, not as a dtype
        with pytest.raises(ValueError, match="dtype must name a torch dtype"):
            check_dtype_name(bad)
