#!/usr/bin/env bash
# Here, before a device run: the wheels (Python 3.12, x86-64) of the packages that gpu_check.sh
# needs and the device image lacks, at the versions of this checkout's .venv, into .whl/
# (ignored by git). On the device: pip install --no-deps --no-index --target /tmp/site .whl/*.whl
# and put /tmp/site on PYTHONPATH (see the device command in benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# the server's app (pydantic), the async tests (pytest-asyncio), the server tests' client
# (openai and what it needs beyond the image), GGUF loading
NAMES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions
  pytest-asyncio openai distro jiter sniffio gguf)
PINS=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [[ -n $version ]] || { echo "$name is not installed in $PY's environment" >&2; exit 1; }
  PINS+=("$name==$version")
done
rm -rf .whl
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${PINS[@]}"
ls .whl
