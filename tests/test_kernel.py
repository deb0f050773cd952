"""The syscall layer: errors carry errno, the path and the kernel's own words."""

from __future__ import annotations

import errno
import os

import pytest
from criu_fw import kernel
from criu_fw.errors import SyscallError


@pytest.mark.privileged
def test_fsconfig_error_carries_the_fs_context_message_without_level_prefix() -> None:
    # fsopen/fsconfig only build a filesystem context: nothing is mounted anywhere.
    fd = kernel.fsopen("tmpfs")
    try:
        with pytest.raises(SyscallError) as info:
            kernel.fsconfig(fd, kernel.FSCONFIG_SET_STRING, "bogus_opt", "1")
    finally:
        os.close(fd)
    err = info.value
    assert err.errno == errno.EINVAL
    assert str(err) == (
        "fsconfig failed: EINVAL (Invalid argument) "
        "(bogus_opt: tmpfs: Unknown parameter 'bogus_opt')"
    )


def test_failed_syscall_names_the_path() -> None:
    with pytest.raises(SyscallError) as info:
        kernel.open_tree("/nonexistent/criu-fw", kernel.OPEN_TREE_CLOEXEC)
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value, OSError)
    assert str(info.value) == (
        "open_tree on '/nonexistent/criu-fw' failed: ENOENT (No such file or directory)"
    )
