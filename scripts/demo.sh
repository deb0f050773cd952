#!/usr/bin/env bash
# The README's main job. Until restore lands it shows the drivers and the live mount tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/criu-fw drivers
