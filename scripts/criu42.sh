#!/usr/bin/env bash
# CRIU 4.2 built from source, for the tests that run CRIU itself on criu-fw's images and
# criu-fw on CRIU's (tests/test_criu42.py): Debian's packaged criu (3.17) cannot checkpoint
# on current kernels. The source is Debian's copy of the upstream release tarball (checked
# against its SHA-256); only the `criu` binary is built, into .venv/criu-4.2/criu.
# Idempotent. A machine that cannot fetch the source gets a warning and no binary: those
# tests then skip, saying why.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
version=4.2.1
sha256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
url=${CRIU_SOURCE_URL:-http://deb.debian.org/debian/pool/main/c/criu/criu_${version}.orig.tar.xz}
dest=$top/.venv/criu-4.2
[ -x "$dest/criu" ] && "$dest/criu" --version 2>/dev/null | grep -q "Version: $version" && exit 0

build_deps=(gcc make pkgconf xz-utils curl libbsd-dev libcap-dev libnet1-dev libnl-3-dev
            libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
            libgnutls28-dev libnftables-dev python3-protobuf)
missing=()
for p in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! curl -fsS --retry 3 -o "$work/src.tar.xz" "$url"; then
    echo "warning: could not fetch CRIU $version's source from $url: tests/test_criu42.py will skip" >&2
    exit 0
fi
if ! echo "$sha256  $work/src.tar.xz" | sha256sum -c --quiet -; then
    echo "error: $url is not CRIU $version's release tarball (SHA-256 differs)" >&2
    exit 1
fi
tar -C "$work" -xJf "$work/src.tar.xz"
log=$work/build.log
if ! make -C "$work/criu-$version" -j"$(nproc)" criu >"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "error: building CRIU $version failed" >&2
    exit 1
fi
mkdir -p "$dest"
install -m 0755 "$work/criu-$version/criu/criu" "$dest/criu.new"
mv "$dest/criu.new" "$dest/criu"
