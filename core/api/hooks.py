"""The one typed way to call a driver's hook: a method per hook, routed to exactly one driver.

The engines never name a hook by string: ``mgr.hooks.parse_mount(driver, mount, tree, ctx)``
has real parameter and return types, and what a driver returns is checked against the
hook's contract (a driver that returns a ``dict`` from ``parse_mount`` fails naming itself
and the hook, instead of deep inside the image writer).

Every call goes to the named driver's implementation and to cross-cutting wrapper plugins
(tracing) that wrap the hook, never to other drivers. Errors out of a driver are attributed
to it (:class:`~criu_fw.errors.DriverError`); :func:`current_driver` says, inside a call,
which driver it was routed to.

The one fast path: when exactly one plain implementation would run (no wrapper, nobody
monitoring hook calls), it is called as a plain function with the arguments in the hook's
order, instead of through pluggy's per-call machinery (a keyword dict, the hook-caller's
loop: about 1.5 us a call, which the dump pays once per mount). The decision is made once per
(hook, driver) and made again whenever plugins are registered, unregistered or monitored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import pluggy

from ..errors import CriuFwError, DriverError
from ..files import FileMapping, OpenFile
from ..plan import BindExternal, BindFrom, ContentJob, MountPlan, NewSuperblock, is_content_job
from .base import DriverState

if TYPE_CHECKING:
    from ..context import DumpContext, RestoreContext
    from ..model import Mount, MountTree
    from .loader import DriverManager

#: The hooks, each with its arguments in the order the facade passes them.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "parse_mount": ("mount", "tree", "ctx"),
    "fixup_fd_path": ("file", "mount", "ctx"),
    "fixup_vma": ("vma", "mount", "ctx"),
    "rebuild_mount": ("mount", "state", "ctx"),
    "dump_content": ("mount", "path", "ctx"),
    "restore_content": ("mount", "image", "path", "ctx"),
}

#: The driver the hook call in progress was routed to (for wrappers such as tracing).
_routed: ContextVar[str | None] = ContextVar("criu_fw_routed_driver", default=None)

_Fn = Callable[..., Any]


def current_driver() -> str | None:
    """Inside a hook call: the name of the driver it was routed to; else ``None``."""
    return _routed.get()


@contextlib.contextmanager
def routed_to(driver: str) -> Iterator[None]:
    """Calls made inside are as if routed to ``driver`` (:func:`current_driver`): for a
    driver's own unit tests that call its hook methods directly (``ctx.claim_files`` needs
    to know who claims)."""
    token = _routed.set(driver)
    try:
        yield
    finally:
        _routed.reset(token)


def _nothing(*_args: object) -> None:
    return None


def _attributed(hook: str, driver: str, exc: BaseException) -> DriverError | None:
    """The error to raise for ``exc`` out of ``driver``'s ``hook``; None: raise it as it is."""
    if isinstance(exc, DriverError):
        return None if exc.driver == driver else DriverError(driver, f"{hook}: {exc}")
    if isinstance(exc, CriuFwError):
        return DriverError(driver, str(exc))
    if isinstance(exc, Exception):
        return DriverError(driver, f"{hook} failed: {type(exc).__name__}: {exc}")
    return None


def _wrong(hook: str, driver: str, got: object, wanted: str) -> DriverError:
    return DriverError(driver, f"{hook} returned {type(got).__name__}, not {wanted}")


def in_context(err: DriverError, hook: str, what: str, key: str) -> DriverError:
    """``err`` (out of a driver's ``hook``) saying what the call was about.

    ``driver 'x': parse_mount on mount 61 at '/dev/shm' (tmpfs, source 'tmpfs'):
    RuntimeError: boom``. A message of the driver's own (a criu-fw error) that already
    names the item (``key``: its path or ``mount N``) is left as it is.
    """
    cause = err.__cause__
    if cause is not None and not isinstance(cause, CriuFwError):
        reason = f"{type(cause).__name__}: {cause}"
    else:
        reason = str(err).removeprefix(f"driver {err.driver!r}: ")
        if key in reason:
            return err
    return DriverError(err.driver, f"{hook} on {what}: {reason}")


def on_mount(describe: str, exc: BaseException) -> str:
    """The one-line message for ``exc`` (out of a hook or the core) about the mount that
    ``describe`` names (``mount 7 at '/x' (tmpfs, source 't')``), naming it once: a driver
    that already named the mount in its own message does not get it said twice."""
    text = str(exc)
    for prefix in (f"{describe}: ", f"{describe.split(' at ')[0]}: "):
        text = text.replace(prefix, "", 1) if prefix in text else text
    return f"{describe}: {text}"


class Hooks:
    """The hooks of one :class:`~criu_fw.api.loader.DriverManager` (``mgr.hooks``)."""

    def __init__(self, mgr: DriverManager) -> None:
        self._mgr = mgr
        self._fns: dict[tuple[str, str], _Fn] = {}
        self._generation = -1

    # -- the hooks -------------------------------------------------------------------------

    def parse_mount(
        self, driver: str, mount: Mount, tree: MountTree, ctx: DumpContext
    ) -> DriverState | None:
        got = self._call("parse_mount", driver, (mount, tree, ctx))
        if got is None or isinstance(got, DriverState):
            return got
        raise _wrong("parse_mount", driver, got, "a DriverState or None")

    def fixup_fd_path(
        self, driver: str, file: OpenFile, mount: Mount | None, ctx: DumpContext
    ) -> OpenFile | None:
        got = self._call("fixup_fd_path", driver, (file, mount, ctx))
        if got is None or isinstance(got, OpenFile):
            return got
        raise _wrong("fixup_fd_path", driver, got, "an OpenFile or None")

    def fixup_vma(
        self, driver: str, vma: FileMapping, mount: Mount | None, ctx: DumpContext
    ) -> FileMapping | None:
        got = self._call("fixup_vma", driver, (vma, mount, ctx))
        if got is None or isinstance(got, FileMapping):
            return got
        raise _wrong("fixup_vma", driver, got, "a FileMapping or None")

    def rebuild_mount(
        self, driver: str, mount: Mount, state: DriverState | None, ctx: RestoreContext
    ) -> MountPlan | None:
        got = self._call("rebuild_mount", driver, (mount, state, ctx))
        if got is None or isinstance(got, NewSuperblock | BindFrom | BindExternal):
            return got
        raise _wrong("rebuild_mount", driver, got, "a mount plan or None")

    def dump_content(
        self, driver: str, mount: Mount, path: str, ctx: DumpContext
    ) -> str | None:
        got = self._call("dump_content", driver, (mount, path, ctx))
        if got is None or isinstance(got, str):
            return got
        raise _wrong("dump_content", driver, got, "an image name or None")

    def restore_content(
        self, driver: str, mount: Mount, image: str, path: str, ctx: RestoreContext
    ) -> bool | ContentJob | None:
        got = self._call("restore_content", driver, (mount, image, path, ctx))
        if got is None or isinstance(got, bool) or is_content_job(got):
            return got
        raise _wrong("restore_content", driver, got, "True, a ContentJob or None")

    # -- routing ---------------------------------------------------------------------------

    def implements(self, hook: str, driver: str) -> bool:
        """Whether calling ``hook`` on ``driver`` can do anything: the driver implements it
        or a wrapper plugin wraps it (the engines skip work for calls that cannot)."""
        return self._fn(hook, driver) is not _nothing

    def _call(self, hook: str, driver: str, args: tuple[Any, ...]) -> Any:
        fn = self._fn(hook, driver)
        token = _routed.set(driver)
        try:
            return fn(*args)
        except BaseException as exc:
            err = _attributed(hook, driver, exc)
            if err is None:
                raise
            raise err from exc
        finally:
            _routed.reset(token)

    def _fn(self, hook: str, driver: str) -> _Fn:
        pm = self._mgr.pm
        if pm.generation != self._generation:
            self._fns.clear()
            self._generation = pm.generation
        key = (hook, driver)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._decide(hook, driver)
        return fn

    def _decide(self, hook: str, driver: str) -> _Fn:
        info = self._mgr.drivers.get(driver)
        if info is None:
            raise DriverError(driver, f"{hook}: no such driver is loaded")
        others = [i.obj for n, i in self._mgr.drivers.items() if n != driver]
        caller = self._mgr.pm.subset_hook_caller(hook, remove_plugins=others)
        impls = caller.get_hookimpls()
        if not impls:
            return _nothing
        names = SIGNATURES[hook]
        impl = impls[0]
        plain = (
            len(impls) == 1
            and not self._mgr.pm.monitored
            and not (impl.wrapper or impl.hookwrapper or impl.kwargnames)
            and isinstance(caller, pluggy.HookCaller)
        )
        if plain:
            # An implementation may take a subset of the arguments (pluggy allows it).
            taken = tuple(impl.argnames)
            if taken == names:
                return impl.function
            where = tuple(names.index(n) for n in taken)
            function = impl.function
            return lambda *args: function(*(args[i] for i in where))
        return lambda *args: caller(**dict(zip(names, args, strict=True)))
