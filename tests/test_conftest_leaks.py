"""The suite's leak check: a test's own mounts count, a busy machine's other mounts do not."""

from __future__ import annotations

from conftest import leaked

W = ("/tmp/pytest-of-root/pytest-7/", "/tmp/criu-fw-")
BASE = ["0:5 / / rw - ext4 /dev/vda rw", "0:21 / /sys rw - sysfs sysfs rw"]


def test_other_processes_mounts_are_not_the_tests() -> None:
    after = [*BASE, "0:99 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw",
             "0:98 / /run/netns/c1 rw - nsfs nsfs rw"]
    assert leaked([*BASE, "0:97 / /run/old rw - tmpfs t rw"], after, W) == []


def test_a_mount_left_under_the_tests_directories_counts() -> None:
    line = "0:99 / /tmp/pytest-of-root/pytest-7/t0/m rw - tmpfs t rw"
    assert leaked(BASE, [*BASE, line], W) == [f"+ {line}"]
    gone = "0:98 / /tmp/criu-fw-scn-1/m rw - tmpfs t rw"
    assert leaked([*BASE, gone], BASE, W) == [f"- {gone}"]


def test_a_reconfigured_host_mount_counts() -> None:
    ro = "0:21 / /sys ro - sysfs sysfs ro"
    assert leaked(BASE, [BASE[0], ro], W) == [f"+ {ro}"]
