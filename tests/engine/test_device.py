import pytest
import torch

from server.config import ServerConfig
from server.engine.device import resolve_device


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # named: as given
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_an_engine_on_auto_runs_where_auto_resolves(tiny_llama_path) -> None:
    from server.engine import LLMEngine

    engine = LLMEngine.from_pretrained(str(tiny_llama_path), device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.device.type == expected
    assert next(engine.runner.model.parameters()).device.type == expected
