#!/usr/bin/env bash
# The whole test suite, set-up included: the README's test command.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/bootstrap.sh
# Always refresh the editable link tree: files added since the last install must be seen.
flock .venv/.install.lock .venv/bin/python -m pip install -q -e . --no-deps \
    --config-settings editable_mode=strict >/dev/null 2>&1
.venv/bin/python -m ruff check core fsdrivers tests bench scripts examples
.venv/bin/python -m mypy -p criu_fw
exec .venv/bin/python -m pytest -q "$@"
