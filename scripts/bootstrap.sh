#!/usr/bin/env bash
# Set up everything criu-fw needs on a fresh Debian machine (run as root): the Debian packages
# (criu for its `crit` reader, tar for tmpfs archives, util-linux for unshare/nsenter,
# squashfs-tools and erofs-utils for the example driver's images) and a
# virtual environment in .venv with criu-fw installed editable plus its test extras.
# Idempotent: a second run only checks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

need_apt=()
command -v crit >/dev/null 2>&1 || need_apt+=(criu)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)
# ext4 on loop devices for the block-device tests.
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
# squashfs and erofs images for the example driver's round trips (examples/criu-fw-squashfs).
command -v mksquashfs >/dev/null 2>&1 || need_apt+=(squashfs-tools)
command -v mkfs.erofs >/dev/null 2>&1 || need_apt+=(erofs-utils)
# zstd: podman's checkpoint archives are zstd'd by default (show/verify read them through it).
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# A static shell for the container-like test namespaces and the demo (no libraries to copy).
{ command -v busybox >/dev/null 2>&1 || test -x /bin/busybox; } || need_apt+=(busybox-static)
# Real container runtimes for the runtime round-trip tests (tests/test_runtime_oci.py,
# tests/test_runtime_podman.py): runc, crun, and podman with its overlay storage.
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v crun >/dev/null 2>&1 || need_apt+=(crun)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
# ip: CRIU 4.2's restore wants the loopback of its new network namespace up (test_criu42.py).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# Debian's own python3 creates virtual environments only with python3-venv installed.
"${PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

py=${PYTHON:-python3}
stamp=.venv/.criu-fw-installed
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
# Reinstall when pyproject.toml changed since the last install (new deps, entry points).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log=$(mktemp)
    # strict editable mode: a link tree on a plain .pth path, so mypy sees criu_fw too
    # (the default editable mode uses an import hook that type checkers cannot follow).
    if ! .venv/bin/python -m pip install -e ".[test]" --config-settings editable_mode=strict \
            >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
# criu-fw's own bytecode: an editable install compiles nothing, and where
# PYTHONDONTWRITEBYTECODE is set (this machine's shells, many container images) Python never
# writes it either, so every command compiled criu-fw's modules again (`criu-fw restore
# --help` 0.20-0.24 s against 0.13-0.14 s). Up-to-date files are skipped: a second run costs
# a stat per module.
pkg=$(.venv/bin/python -c 'import criu_fw, os; print(os.path.dirname(criu_fw.__file__))')
.venv/bin/python -m compileall -q "$pkg" >/dev/null
