#!/usr/bin/env bash
# The whole test suite, set-up included: the README's test command.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/bootstrap.sh
# CRIU 4.2 itself, for the two-way compatibility tests (Debian's criu 3.17 cannot checkpoint
# on this kernel): built from source into .venv/criu-4.2.
bash scripts/criu42.sh
# Refresh the editable link tree when the package's files changed since the last install
# (a file added must be seen). Only then: a reinstall briefly removes the package, and a
# criu-fw started meanwhile (another run's tests) would fail to import it.
files=$(find core fsdrivers proto -name '*.py' -o -name '*.pyi' -o -name 'py.typed' | sort |
        sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.criu-fw-files 2>/dev/null)" != "$files" ]; then
    flock .venv/.install.lock .venv/bin/python -m pip install -q -e . --no-deps \
        --config-settings editable_mode=strict >/dev/null 2>&1
    echo "$files" > .venv/.criu-fw-files
fi
.venv/bin/python -m ruff check core fsdrivers tests bench scripts examples
.venv/bin/python -m mypy -p criu_fw
exec .venv/bin/python -m pytest -q "$@"
