"""The driver registry: one driver per fstype, never chosen by registration order.

Which driver handled which mount is asserted with pluggy's hook-call monitoring and with the
tracing plugin, on mounts read from a real private namespace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from criu_fw import FsDriver, hookimpl
from criu_fw.api.hooks import current_driver
from criu_fw.api.loader import DriverConfig, DriverManager, load_drivers
from criu_fw.api.tracing import Tracer
from criu_fw.errors import CriuFwError, DriverConflictError, DriverError, DriverLoadError
from criu_fw.kernel.mountinfo import parse, read_mountinfo
from criu_fw.model import Mount, MountTree
from criu_fw.plan import NewSuperblock
from criu_fw.testing import NamespaceScenario

BUILTINS = frozenset({"generic", "overlay", "aufs"})


class Driver(FsDriver):
    """A test driver: answers parse_mount and rebuild_mount with its own name."""

    def __init__(self, name: str, fstypes: tuple[str, ...] = (), fallback: bool = False) -> None:
        self.name = name
        self.fstypes = fstypes  # type: ignore[misc]
        self.fallback = fallback  # type: ignore[misc]

    @hookimpl
    def parse_mount(self, mount: Mount) -> None:
        return None

    @hookimpl
    def rebuild_mount(self, mount: Mount) -> NewSuperblock:
        return NewSuperblock(mount.fstype, f"made-by-{self.name}")


class Monitor:
    """Records, per hook call, the drivers (non-wrapper implementations) it reached."""

    def __init__(self, mgr: DriverManager) -> None:
        self.calls: list[tuple[str, int | None, tuple[str, ...]]] = []
        mgr.pm.add_hookcall_monitoring(self.before, self.after)

    def before(self, hook: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        mount = kwargs.get("mount")
        names = tuple(i.plugin_name for i in impls if not (i.wrapper or i.hookwrapper))
        self.calls.append((hook, mount.mnt_id if mount is not None else None, names))

    def after(self, outcome: Any, hook: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        pass


def manager(*plugins: object, **config: Any) -> DriverManager:
    """Built-ins blocked unless asked for: these tests must not depend on their behaviour."""
    blocked = config.pop("blocked", BUILTINS)
    return DriverManager(DriverConfig(blocked=frozenset(blocked), **config)).load(plugins)


@pytest.fixture(scope="module")
def live_tree() -> Iterator[MountTree]:
    """A private namespace with one mount of each kind the routing tests need."""
    with NamespaceScenario(
        "mkdir r t l u w o && mount -t ramfs myram r && mount -t tmpfs mytmp t"
        " && mount -t overlay ovl -o lowerdir=l,upperdir=u,workdir=w o"
    ) as s:
        yield read_mountinfo(s.pid)


def mine(tree: MountTree) -> list[Mount]:
    return [m for m in tree if m.source in ("myram", "mytmp", "ovl")]


@pytest.mark.privileged
def test_each_mount_reaches_exactly_its_owner(live_tree: MountTree) -> None:
    mgr = manager(Driver("ram", ("ramfs",)), Driver("ovl", ("overlay",)),
                  Driver("fb", fallback=True))
    mon = Monitor(mgr)
    plans = {}
    for m in mine(live_tree):
        plan = mgr.hooks.rebuild_mount(mgr.owner(m.fstype), mount=m, state=None, ctx=None)
        plans[m.fstype] = plan.source
    assert plans == {"ramfs": "made-by-ram", "overlay": "made-by-ovl",
                                "tmpfs": "made-by-fb"}
    by_mount = {mnt_id: names for hook, mnt_id, names in mon.calls if hook == "rebuild_mount"}
    ids = {m.fstype: m.mnt_id for m in mine(live_tree)}
    assert by_mount == {ids["ramfs"]: ("ram",), ids["overlay"]: ("ovl",), ids["tmpfs"]: ("fb",)}


@pytest.mark.privileged
def test_tracing_wrapper_sees_calls_routed_to_every_driver(live_tree: MountTree) -> None:
    tracer = Tracer()
    mgr = manager(Driver("ram", ("ramfs",)), Driver("fb", fallback=True), tracer)
    assert "tracing" in mgr.wrappers and "tracing" not in mgr.drivers
    for m in mine(live_tree):
        mgr.hooks.parse_mount(mgr.owner(m.fstype), mount=m, tree=live_tree, ctx=None)
    seen = {(hook, driver, subject.split(" at ")[0]) for hook, driver, subject in tracer.calls()}
    ids = {m.fstype: m.mnt_id for m in mine(live_tree)}
    assert seen == {
        ("parse_mount", "ram", f"mount {ids['ramfs']}"),
        ("parse_mount", "fb", f"mount {ids['tmpfs']}"),
        ("parse_mount", "fb", f"mount {ids['overlay']}"),
    }
    assert all(r.error is None and r.seconds >= 0 for r in tracer.records)


def test_generic_is_the_fallback_and_builtins_own_their_types() -> None:
    mgr = load_drivers(DriverConfig(external=False))
    assert set(mgr.drivers) >= BUILTINS
    assert mgr.owner("overlay") == "overlay"
    assert mgr.owner("aufs") == "aufs"
    assert mgr.owner("tmpfs") == "generic"
    assert mgr.owner("some-fs-nobody-claims") == "generic"
    assert mgr.info("generic").fallback and mgr.info("generic").builtin
    assert mgr.info("overlay").origin == "built-in"


def test_patterns_exact_names_and_specificity() -> None:
    mgr = manager(Driver("anyfuse", ("fuse.*",)), Driver("ss", ("fuse.ss*",)),
                  Driver("exact", ("fuse.sshfs",)), Driver("fb", fallback=True))
    assert mgr.owner("fuse.sshfs") == "exact"
    assert mgr.owner("fuse.ssxx") == "ss"
    assert mgr.owner("fuse.gvfsd") == "anyfuse"
    assert mgr.owner("fuseblk") == "fb"


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_two_claims_are_an_error_naming_both_whatever_the_order(order: tuple[str, str]) -> None:
    drivers = {n: Driver(n, ("ramfs", f"only-{n}")) for n in order}
    mgr = manager(*drivers.values(), Driver("fb", fallback=True))
    with pytest.raises(DriverConflictError) as info:
        mgr.owner("ramfs")
    msg = str(info.value)
    assert "'a'" in msg and "'b'" in msg and "--prefer ramfs=" in msg
    assert info.value.drivers == ("a", "b") and isinstance(info.value, LookupError)
    # The conflict is confined to the contested fstype.
    assert mgr.owner("only-a") == "a" and mgr.owner("tmpfs") == "fb"
    with pytest.raises(DriverConflictError):
        mgr.check_conflicts()
    with pytest.raises(DriverConflictError, match="'a' and 'b' both claim fstype 'ramfs'"):
        manager(*drivers.values(), strict=True)


def test_prefer_settles_a_conflict_from_config_env_and_for_fallbacks() -> None:
    a, b = Driver("a", ("ramfs",)), Driver("b", ("ramfs",))
    assert manager(a, b, prefer={"ramfs": "b"}).owner("ramfs") == "b"
    env = {"CRIU_FW_PREFER": "ramfs=a, fuse.x=b", "CRIU_FW_BLOCK_DRIVERS": "overlay,aufs,generic"}
    cfg = DriverConfig.from_env(env)
    mgr = DriverManager(cfg).load([Driver("a", ("ramfs",)), Driver("b", ("ramfs",))])
    assert mgr.owner("ramfs") == "a" and mgr.owner("fuse.x") == "b"
    assert set(mgr.drivers) == {"a", "b"}
    fb1, fb2 = Driver("fb1", fallback=True), Driver("fb2", fallback=True)
    with pytest.raises(DriverConflictError, match=r"'fb1' and 'fb2' both claim fstype '\*'"):
        manager(fb1, fb2).owner("anything")
    assert manager(Driver("fb1", fallback=True), Driver("fb2", fallback=True),
                   prefer={"*": "fb2"}).owner("anything") == "fb2"


@pytest.mark.parametrize(
    "prefer, message",
    [
        ({"ramfs": "nosuch"}, "no driver named 'nosuch' is loaded"),
        ({"ramfs": "fb"}, "driver 'fb' does not claim 'ramfs'"),
        ({"xfs": "nosuch"}, "no driver named 'nosuch' is loaded"),
    ],
)
def test_prefer_mistakes_are_usage_errors(prefer: dict[str, str], message: str) -> None:
    with pytest.raises(CriuFwError, match=message) as info:
        manager(Driver("a", ("ramfs",)), Driver("fb", fallback=True), prefer=prefer)
    assert info.value.exit_code == 2


def test_bad_prefer_env_is_a_usage_error() -> None:
    with pytest.raises(CriuFwError, match="CRIU_FW_PREFER: expected FSTYPE=DRIVER, got 'ramfs'"):
        DriverConfig.from_env({"CRIU_FW_PREFER": "ramfs"})


def test_a_blocked_builtin_is_replaced_by_another_driver() -> None:
    mine = Driver("myoverlay", ("overlay",))
    with pytest.raises(DriverConflictError, match="'myoverlay' and 'overlay'"):
        load_drivers(DriverConfig(external=False), [mine]).owner("overlay")
    mgr = load_drivers(DriverConfig(blocked=frozenset({"overlay"}), external=False), [mine])
    assert "overlay" not in mgr.drivers
    assert mgr.owner("overlay") == "myoverlay"
    assert mgr.info("myoverlay").origin == "<passed by caller>"
    assert set(mgr.info("myoverlay").hooks) == {"parse_mount", "rebuild_mount"}


class Misspelled(FsDriver):
    name = "typo"
    fstypes = ("typofs",)

    @hookimpl
    def parse_mounts(self, mount: Mount) -> None:  # not a hook: check_pending rejects it
        return None


class WrongArgs(FsDriver):
    name = "wrongargs"
    fstypes = ("wafs",)

    @hookimpl
    def parse_mount(self, mount: Mount, bogus: int) -> None:
        return None


class StringTypes(FsDriver):
    name = "stringtypes"
    fstypes = "tmpfs"  # type: ignore[assignment]


@pytest.mark.parametrize(
    "plugin, reason",
    [
        (Misspelled(), "unknown hook 'parse_mounts' in plugin"),
        (WrongArgs(), "registration failed: .*bogus"),
        (StringTypes(), "registration failed: fstypes must be a collection"),
    ],
)
def test_broken_plugins_from_a_caller_are_fatal_and_named(plugin: object, reason: str) -> None:
    with pytest.raises(DriverLoadError, match=rf"driver '{plugin.name}' .*{reason}") as info:  # type: ignore[attr-defined]
        manager(plugin)
    assert isinstance(info.value, ImportError) and info.value.__cause__ is not None
    assert "\n" not in str(info.value)


def test_a_plugin_name_cannot_be_loaded_twice() -> None:
    with pytest.raises(DriverLoadError, match="a plugin named 'a' is already loaded"):
        manager(Driver("a", ("x",)), Driver("a", ("y",)))


class Failing(FsDriver):
    name = "failing"
    fstypes = ("ramfs",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    @hookimpl
    def rebuild_mount(self, mount: Mount) -> None:
        assert current_driver() == "failing"
        raise self.exc


MOUNT = next(iter(parse(b"5 1 0:9 / /r rw - ramfs myram rw")))


@pytest.mark.parametrize(
    "exc, message",
    [
        (ValueError("bad option 'x'"), "driver 'failing': rebuild_mount failed: ValueError: "
                                        "bad option 'x'"),
        (OSError(5, "I/O error"), "driver 'failing': rebuild_mount failed: OSError: "),
        (CriuFwError("layer /l is gone"), "driver 'failing': layer /l is gone"),
        (DriverError("other", "inner"), "driver 'failing': rebuild_mount: driver 'other': inner"),
    ],
)
def test_a_driver_exception_reaches_the_caller_attributed(exc: Exception, message: str) -> None:
    tracer = Tracer()
    mgr = manager(Failing(exc), tracer)
    with pytest.raises(DriverError) as info:
        mgr.hooks.rebuild_mount(mgr.owner("ramfs"), mount=MOUNT, state=None, ctx=None)
    assert info.value.driver == "failing"
    assert str(info.value).startswith(message)
    assert info.value.__cause__ is exc
    # The wrapper saw the failure, attributed to the same driver.
    (rec,) = tracer.records
    assert (rec.hook, rec.driver, rec.error) == ("rebuild_mount", "failing", repr(exc))
    assert current_driver() is None


def test_a_driver_without_the_hook_gives_the_default() -> None:
    mgr = manager(Driver("ram", ("ramfs",)))
    assert mgr.hooks.fixup_vma("ram", vma=None, mount=None, ctx=None) is None
    with pytest.raises(DriverError, match="'nosuch': fixup_vma: no such driver is loaded"):
        mgr.hooks.fixup_vma("nosuch", vma=None, mount=None, ctx=None)


def test_nothing_is_loaded_at_import_time() -> None:
    code = (
        "import sys, criu_fw, criu_fw.cli, criu_fw.api.loader;"
        "print(sorted(m for m in sys.modules if m.startswith('criu_fw.fsdrivers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_strict_and_external_from_env() -> None:
    cfg = DriverConfig.from_env({"CRIU_FW_STRICT_DRIVERS": "1", "CRIU_FW_NO_EXTERNAL_DRIVERS": "1"})
    assert cfg.strict and not cfg.external
    with pytest.raises(TypeError, match="unknown DriverConfig settings"):
        DriverConfig.from_env({}, colour="red")


class _Dist:
    """An installed distribution as importlib.metadata shows it, with a given METADATA."""

    def __init__(self, text: str) -> None:
        self.text = text

    def read_text(self, name: str) -> str | None:
        return self.text if name == "METADATA" else None

    @property
    def metadata(self) -> Any:
        import email

        return email.message_from_string(self.text)  # None for a missing header, as there

    name = version = "from-metadata"


class _EntryPoint:
    def __init__(self, text: str) -> None:
        self.dist = _Dist(text)


@pytest.mark.parametrize(
    "text, want",
    [
        ("Metadata-Version: 2.1\nName: criu-fw-zfs\nVersion: 1.2\n\nName: body\n",
         ("criu-fw-zfs", "1.2")),
        # A header the quick reading does not find (after the blank line ending the headers):
        # the standard parser decides, as it always did.
        ("Metadata-Version: 2.1\nName: criu-fw-zfs\n\nVersion: 9\n",
         ("criu-fw-zfs", "from-metadata")),
    ],
)
def test_distribution_name_and_version_from_metadata(text: str, want: tuple[str, str]) -> None:
    from criu_fw.api.loader import _dist_of

    assert _dist_of(_EntryPoint(text)) == want  # type: ignore[arg-type]
