"""Work a dump hook leaves running (``ctx.in_background``): at most one job per CPU at once,
every job waited for before the dump goes on, errors named, the rest cancelled on failure.
The real user is the generic driver's GNU tar for big filesystems (test_content_archives
round-trips those)."""

from __future__ import annotations

import pytest
from criu_fw.context import DumpContext
from criu_fw.errors import DumpError


class Job:
    def __init__(self, log: list[str], name: str, fail: Exception | None = None) -> None:
        self.log, self.name, self.fail = log, name, fail
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def wait(self) -> None:
        self.log.append(f"wait {self.name}")
        self.finished = True
        if self.fail is not None:
            raise self.fail

    def cancel(self) -> None:
        if not self.finished:
            self.log.append(f"cancel {self.name}")
        self.finished = True


def test_no_more_jobs_run_than_workers_and_all_are_waited_for() -> None:
    log: list[str] = []
    ctx = DumpContext(image_dir="/nonexistent", workers=2)
    for name in "abcd":
        ctx.in_background(Job(log, name), f"mount {name}")
        log.append(f"started {name}")
    assert log == ["started a", "started b", "wait a", "started c", "wait b", "started d"]
    ctx.wait_background()
    assert log[-2:] == ["wait c", "wait d"]


def test_a_failed_job_is_named_and_the_others_are_cancelled() -> None:
    log: list[str] = []
    ctx = DumpContext(image_dir="/nonexistent", workers=4)
    ctx.in_background(Job(log, "a", OSError("disk full")), "mount 7 at '/big'")
    ctx.in_background(Job(log, "b"), "mount 8 at '/other'")
    with pytest.raises(DumpError, match=r"^mount 7 at '/big': OSError: disk full$"):
        ctx.wait_background()
    assert log == ["wait a", "cancel b"]
    ctx.cancel_background()  # nothing left: no second cancel
    assert log == ["wait a", "cancel b"]
