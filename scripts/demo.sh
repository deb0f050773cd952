#!/usr/bin/env bash
# The README's main job: the whole round trip on an embedded example that needs nothing from
# the user. It builds a small container-like mount namespace (a tmpfs root after pivot_root
# with a shell in it, an overlay, binds, an overmount, a shared group, a file held open by a
# process), dumps it, restores it, verifies the restored namespace against the images and
# prints both trees. Every mount happens in private namespaces of child processes; every
# process started here is ended by its PID; the temporary directory is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
py=.venv/bin/python
cli=.venv/bin/criu-fw

work=$(mktemp -d "${TMPDIR:-/tmp}/criu-fw-demo-XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The container: a Python process builds the tree, pivots into the tmpfs root and execs the
# container's own /bin/sh (copied in with its libraries), which holds /merged/hello open.
cat >"$work/container.py" <<'EOF'
import os, shutil, subprocess, sys
from criu_fw import kernel
root = sys.argv[1]
kernel.enter_private_namespace()
kernel.mount("rootfs", root, "tmpfs", 0, "size=64m,mode=755")
def sh(cmd): subprocess.run(["sh", "-ec", cmd], check=True, cwd=root)
# The container's programs: one static busybox (scripts/bootstrap.sh installs it).
bb = shutil.which("busybox") or "/bin/busybox"
os.makedirs(root + "/bin")
shutil.copy2(bb, root + "/bin/busybox")
for applet in ("sh", "cat", "ls", "sleep", "umount"):
    os.symlink("busybox", root + "/bin/" + applet)
sh("""
mkdir -p layers proc data bind over shared peer merged
mount -t tmpfs layers layers
mkdir layers/lower layers/upper layers/work
echo 'hello from the lower layer' > layers/lower/hello
mount -t overlay overlay -o lowerdir=layers/lower,upperdir=layers/upper,workdir=layers/work merged
echo 'written through the overlay' > merged/new
echo 'a bound directory' > data/file
mount --bind data bind
mount -t tmpfs under over; echo 'hidden under the overmount' > over/hidden
mount -t tmpfs top over; echo 'on top' > over/visible
mount -t tmpfs shr shared; mount --make-shared shared; mount --bind shared peer
mount -t proc proc proc
""")
os.chdir(root)
os.mkdir("old")
kernel.pivot_root(".", "old")
kernel.umount2("/old", kernel.MNT_DETACH)
os.rmdir("/old")
os.chdir("/")
# From here on only what is inside the container runs: its shell holds the open file.
os.execv("/bin/sh", ["/bin/sh", "-c",
         "exec 3</merged/hello; echo ready; exec /bin/sleep 100000 <&3 >&3 2>&3"])
EOF

mkdir "$work/root"
unshare -m --propagation private "$py" "$work/container.py" "$work/root" >"$work/container.out" &
cpid=$!
disown "$cpid"  # ended by PID in cleanup; no job-control notice when it is killed
pids+=("$cpid")
for _ in $(seq 100); do grep -q ready "$work/container.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/container.out" || { echo "demo: the container did not start" >&2; exit 1; }
# The container's own process is the python child of unshare (unshare execs it: same PID).
echo "== the original namespace (process $cpid)"
"$cli" tree -t "$cpid"

echo
echo "== dump"
"$cli" dump -t "$cpid" -D "$work/images"
ls "$work/images"

echo
echo "== restore"
rpid=$("$cli" restore -D "$work/images" --detach --pidfile "$work/restored.pid" | head -n 1)
pids+=("$rpid")
echo "restored namespace held by process $rpid"

echo
echo "== the restored namespace (process $rpid)"
"$cli" tree -t "$rpid"

echo
echo "== verify"
"$cli" verify -D "$work/images" -t "$rpid"

echo
echo "== inside the restored namespace, with its own shell"
nsenter -t "$rpid" -m -- /bin/sh -c '
    cat /merged/hello /merged/new /bind/file /over/visible
    ls /shared /peer
'

echo
echo "== the open file held by the container's shell, as dumped (files.img)"
"$cli" show "$work/images/files.img" | "$py" -c '
import json, sys
for entry in json.load(sys.stdin)["entries"]:
    reg = entry.get("reg", {})
    if reg.get("name") == "/merged/hello":
        print(", ".join(f"{k}: {reg.get(k)}" for k in ("name", "mnt_id", "flags", "pos")))
'

echo
echo "== propagation after restore: a mount made in /shared appears in its peer /peer"
nsenter -t "$rpid" -m -- /bin/sh -c '
    mkdir /shared/late && mount -t tmpfs late /shared/late && echo "mounted in /shared" > /shared/late/x
    cat /peer/late/x
'

echo
echo "== what the overmount hides (the top tmpfs unmounted inside the restored namespace)"
nsenter -t "$rpid" -m -- /bin/sh -c 'umount /over && cat /over/hidden'
echo "demo: round trip complete"
