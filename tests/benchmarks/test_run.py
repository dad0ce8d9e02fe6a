"""benchmarks.run: options a workload with its own driver would not apply are refused."""

import pytest

import benchmarks.run as run


@pytest.fixture
def own_driver(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def main(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(run, "load_workload", lambda name: main)
    return calls


@pytest.mark.parametrize(
    "option",
    [["--rtt-ms", "20"], ["--server-root", "/tmp"], ["--server-flag=--engines=2"],
     ["--ablations", "none"], ["--suffix", "_x"], ["--out", "/tmp"]],
)  # fmt: skip
def test_options_an_own_driver_ignores_are_refused(
    own_driver: list[list[str]], option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["rag", "--quick", *option]) == 2
    assert own_driver == []
    assert option[0].split("=")[0] in capsys.readouterr().err


def test_an_own_driver_gets_quick_and_model(own_driver: list[list[str]]) -> None:
    assert run.main(["rag", "--quick", "--model", "m"]) == 0
    assert own_driver == [["--quick", "--model", "m"]]
