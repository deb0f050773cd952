"""Restore side of the overlay driver: a new superblock whose layers are given by fd.

Every layer directory is a :class:`~criu_fw.plan.PathRef` on a restored mount (or an
:class:`~criu_fw.plan.ExternalRef` for a host path): the restore engine opens it once the
mount exists and passes it with ``FSCONFIG_SET_FD``. Nothing is ever put into a ``lowerdir=``
string, so neither the 255-byte limit on one fsconfig string nor the silent 4,095-byte cut of
mount(2)'s data page can drop a layer; up to the kernel's 500 lower layers restore. Mounted
from inside the restored root, the kernel's d_path of each fd gives clean in-namespace paths in
mountinfo (``lowerdir+=/lower``), and dumping those again resolves to the same layers.
"""

from __future__ import annotations

import os

from criu_fw.driver import (
    BindExternal,
    ExternalRef,
    Mount,
    MountPlan,
    NewSuperblock,
    ParamValue,
    PathRef,
    RestoreContext,
    RestoreError,
)

from .layers import ResolvedLayer
from .options import MAX_LOWER_LAYERS, Role
from .state import OverlayState

_OPTION = {
    Role.LOWER: "lowerdir+",
    Role.DATA: "datadir+",
    Role.UPPER: "upperdir",
    Role.WORK: "workdir",
}


def _ref(layer: ResolvedLayer) -> ParamValue:
    if layer.mnt_id is None:
        return ExternalRef(path=layer.path)
    return PathRef(layer.mnt_id, layer.path)


def _check_volatile(mount: Mount, state: OverlayState, ctx: RestoreContext) -> None:
    """A volatile overlay leaves ``work/incompat/volatile`` in its work directory, and the
    kernel refuses that directory to any later overlay with a bare EINVAL (the reason goes to
    the kernel log only): say it here, where the work directory is a host path to look at."""
    if not any(k == "volatile" or (k, v) == ("fsync", "volatile") for k, v in state.features):
        return
    for work in state.role(Role.WORK):
        if work.mnt_id is not None:
            continue
        marker = os.path.join(work.path, "work", "incompat", "volatile")
        if os.path.lexists(marker):
            raise RestoreError(
                f"{mount.describe()}: the work directory {work.path!r} holds "
                f"work/incompat/volatile, left by the volatile overlay (still mounted, or "
                f"unmounted or crashed since); the kernel refuses to mount it again. Stop the "
                f"source container; if its upper directory is known to be complete, remove "
                f"{marker!r}"
            )


def rebuild_overlay(mount: Mount, state: OverlayState, ctx: RestoreContext) -> MountPlan:
    if state.external_key is not None:
        return BindExternal(ExternalRef(key=state.external_key))
    lowers = state.role(Role.LOWER)
    data = state.role(Role.DATA)
    if not lowers:
        raise RestoreError(f"{mount.describe()}: the dumped state has no lower layer")
    if len(lowers) + len(data) > MAX_LOWER_LAYERS:
        raise RestoreError(
            f"{mount.describe()}: {len(lowers) + len(data)} lower layers, "
            f"the kernel allows {MAX_LOWER_LAYERS}"
        )
    params: list[tuple[str, ParamValue]] = []
    # The kernel wants every lowerdir+ before the first datadir+.
    for layer in (*lowers, *data, *state.role(Role.UPPER), *state.role(Role.WORK)):
        params.append((_OPTION[layer.spec.role], _ref(layer)))
    params.extend(state.features)
    _check_volatile(mount, state, ctx)
    if state.readonly:
        params.append(("ro", None))
    # mount(2)/fsconfig source: what the dump showed ("overlay", or "none" for a new-API mount
    # that set none) so that mountinfo reads the same after restore.
    return NewSuperblock("overlay", mount.source, tuple(params))
