#!/usr/bin/env bash
# Developer shortcut: refresh the editable install (new modules need it in strict mode), then
# run pytest with the given arguments. Assumes scripts/bootstrap.sh ran once.
set -euo pipefail
cd "$(dirname "$0")/.."
flock .venv/.install.lock .venv/bin/python -m pip install -q -e . --no-deps \
    --config-settings editable_mode=strict >/dev/null 2>&1
exec .venv/bin/python -m pytest "$@"
