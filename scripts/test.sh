#!/usr/bin/env bash
# Runs the test suite as CI does: makes a Python venv with the PyPI `safetensors` package (the
# daemon tests read checkpoints through it), then runs `cargo test --locked`. Extra arguments
# go to cargo test, e.g. `scripts/test.sh --test daemon`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${WSTORE_TEST_VENV:-$PWD/.venv-test}"
if ! "$venv/bin/python" -c 'import safetensors, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
export WSTORE_PYTHON="$venv/bin/python"
# With this set, a missing interpreter or package fails the Python test instead of skipping it.
export WSTORE_REQUIRE_PYTHON=1
cargo test --locked "$@"
