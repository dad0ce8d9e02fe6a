"""`StepRun`: a traced step other than a model call (a prompt, a parser, a lambda, a
passthrough) whose input held generated values. Its run is reported to callbacks once the
values are known, with the real input and output, as the plain chain's step reports it; during
the trace it runs without callbacks, so they never see placeholders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManager
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.config import get_callback_manager_for_config


@dataclass(slots=True)
class StepRun:
    """A step's run to report: `input` and `output` hold sentinels until the values arrive."""

    step: Runnable
    config: RunnableConfig | None
    input: Any
    output: Any
    run_type: str | None
    order: int  # its place among the trace's runs (model calls too)

    def _config(self) -> RunnableConfig:
        config = ensure_config(self.config)
        if isinstance(self.step, BasePromptTemplate):  # as a prompt's own invoke adds them
            config["metadata"] = {**config["metadata"], **(self.step.metadata or {})}
            config["tags"] = [*config["tags"], *(self.step.tags or [])]
        return config

    def callbacks(self) -> CallbackManager:
        """The manager the step's own invoke would configure from its config."""
        return get_callback_manager_for_config(self._config())

    def report(self, fill: Callable[[Any], Any]) -> None:
        """Start and end the step's run, with `fill` giving its input and output real values."""
        manager = self.callbacks()
        if not manager.handlers:
            return
        serialized = getattr(self.step, "_serialized", None)
        run = manager.on_chain_start(
            serialized, fill(self.input), run_type=self.run_type,
            name=self._config().get("run_name") or self.step.get_name(),
        )  # fmt: skip
        run.on_chain_end(fill(self.output))


def format_quietly(step: BasePromptTemplate, value: Any, config: RunnableConfig | None) -> Any:
    """`step.invoke(value)` without a run for callbacks (placeholders, probes): a prompt whose
    invoke is LangChain's formats directly; another runs with no callbacks of its own."""
    if type(step).invoke is BasePromptTemplate.invoke:
        return step._format_prompt_with_error_handling(value)
    return step.invoke(value, {**ensure_config(config), "callbacks": []})
