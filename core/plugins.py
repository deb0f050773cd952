"""Loading drivers and choosing, per mount, the one driver that owns its filesystem type.

Built-in and third-party drivers load through one loader, from the entry-point group
``criu_fw.fsdrivers``. The registry maps fstype -> driver; registration order never decides
anything: two drivers claiming one fstype is an error unless the configuration prefers one.

Configuration (library: :class:`DriverConfig`; CLI options; environment):

* ``prefer``: ``{"overlay": "myoverlay"}`` / ``--prefer overlay=myoverlay`` /
  ``CRIU_FW_PREFER=overlay=myoverlay,aufs=x``: which driver wins a contested fstype;
* ``blocked``: ``--block-driver NAME`` / ``CRIU_FW_BLOCK_DRIVERS=a,b``: never load these
  (a built-in name blocks the built-in, so a third-party driver can replace it);
* ``strict``: ``--strict-drivers`` / ``CRIU_FW_STRICT_DRIVERS=1``: a driver that fails to
  load is fatal instead of reported and skipped;
* ``external``: ``CRIU_FW_NO_EXTERNAL_DRIVERS=1`` loads the built-in drivers only.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .driver import DriverState, declared_fstypes
from .errors import CriuFwError, DriverConflictError, DriverError, DriverLoadError, UsageError

ENTRY_POINT_GROUP = "criu_fw.fsdrivers"
BUILTIN_DISTRIBUTION = "criu-fw"
FALLBACK_DRIVER = "generic"
HOOKS = (
    "parse_mount",
    "fixup_fd_path",
    "fixup_vma",
    "rebuild_mount",
    "dump_content",
    "restore_content",
)


def _parse_pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{what}: expected FSTYPE=DRIVER, got {item!r}")
        out[key] = value
    return out


@attrs.frozen
class DriverConfig:
    prefer: Mapping[str, str] = attrs.field(factory=dict)
    blocked: frozenset[str] = frozenset()
    strict: bool = False
    external: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DriverConfig:
        env = os.environ if environ is None else environ
        prefer = _parse_pairs(env.get("CRIU_FW_PREFER", ""), "CRIU_FW_PREFER")
        prefer.update(overrides.pop("prefer", {}) or {})
        blocked = {b.strip() for b in env.get("CRIU_FW_BLOCK_DRIVERS", "").split(",") if b.strip()}
        blocked |= set(overrides.pop("blocked", ()) or ())
        strict = overrides.pop("strict", False) or env.get("CRIU_FW_STRICT_DRIVERS") == "1"
        external = overrides.pop("external", True) and env.get("CRIU_FW_NO_EXTERNAL_DRIVERS") != "1"
        if overrides:
            raise TypeError(f"unknown DriverConfig settings: {sorted(overrides)}")
        return cls(prefer, frozenset(blocked), bool(strict), bool(external))


@attrs.frozen
class DriverInfo:
    """One loaded driver: its stable name, where it came from, what it owns."""

    name: str
    obj: object
    fstypes: tuple[str, ...]
    fallback: bool
    distribution: str
    version: str
    hooks: tuple[str, ...]

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def origin(self) -> str:
        return "built-in" if self.builtin else f"{self.distribution} {self.version}"

    @property
    def state_types(self) -> tuple[type[DriverState], ...]:
        return tuple(getattr(self.obj, "state_types", ()))


@attrs.frozen
class LoadProblem:
    """A driver that could not be loaded and was skipped."""

    name: str
    distribution: str
    reason: str

    def __str__(self) -> str:
        return f"driver {self.name!r} from distribution {self.distribution} skipped: {self.reason}"


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("unknown", "")
    return (dist.metadata["Name"] or dist.name, dist.version)


class DriverManager:
    """The plugin manager of one dump or restore: drivers, registry and typed hook calls."""

    def __init__(self, config: DriverConfig | None = None) -> None:
        self.config = config if config is not None else DriverConfig()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.drivers: dict[str, DriverInfo] = {}
        self.problems: list[LoadProblem] = []
        self._owner: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []
        self._fallback: str | None = None
        self._callers: dict[tuple[str, str], Callable[..., Any]] = {}

    # -- loading ---------------------------------------------------------------------------

    def load(self, plugins: Iterable[object] = ()) -> DriverManager:
        """Load the entry-point drivers, then ``plugins`` (objects passed by a library caller),
        and build the fstype registry. Returns ``self``."""
        for name in self.config.blocked:
            self.pm.set_blocked(name)
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist, version = _dist_of(ep)
            if ep.name in self.config.blocked:
                continue
            if dist != BUILTIN_DISTRIBUTION and not self.config.external:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party package must not break us
                self._problem(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}", exc)
                continue
            self._add(ep.name, obj, dist, version)
        for obj in plugins:
            name = str(getattr(obj, "name", None) or type(obj).__name__)
            self._add(name, obj, "<passed by caller>", "")
        self._build_registry()
        return self

    def _problem(self, name: str, dist: str, reason: str, exc: BaseException | None) -> None:
        if self.config.strict:
            raise DriverLoadError(name, dist, reason) from exc
        self.problems.append(LoadProblem(name, dist, reason))

    def _add(self, name: str, obj: object, dist: str, version: str) -> None:
        if name in self.drivers:
            self._problem(name, dist, f"a driver named {name!r} is already loaded", None)
            return
        try:
            fstypes = declared_fstypes(obj)
            self.pm.register(obj, name=name)
        except Exception as exc:
            self._problem(name, dist, f"registration failed: {exc}", exc)
            return
        try:
            # Catches misspelled hook names (``def parse_mounts``) right away.
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(obj)
            self._problem(name, dist, f"unknown hook: {exc}", exc)
            return
        hooks = tuple(
            h.name for h in (self.pm.get_hookcallers(obj) or ()) if h.name in HOOKS
        )
        if not fstypes and not getattr(obj, "fallback", False):
            # A cross-cutting plugin (tracing, dry run): it wraps hooks, owns no fstype.
            return
        self.drivers[name] = DriverInfo(
            name=name,
            obj=obj,
            fstypes=fstypes,
            fallback=bool(getattr(obj, "fallback", False)),
            distribution=dist,
            version=version,
            hooks=hooks,
        )

    def _build_registry(self) -> None:
        claims: dict[str, list[str]] = {}
        for info in self.drivers.values():
            for t in info.fstypes:
                claims.setdefault(t, []).append(info.name)
            if info.fallback:
                if self._fallback is not None:
                    raise DriverConflictError("*", self._fallback, info.name)
                self._fallback = info.name
        for fstype, names in sorted(claims.items()):
            chosen = self.config.prefer.get(fstype)
            if chosen is not None:
                if chosen not in self.drivers:
                    raise UsageError(
                        f"--prefer {fstype}={chosen}: no driver named {chosen!r} is loaded"
                    )
                if chosen not in names:
                    raise UsageError(
                        f"--prefer {fstype}={chosen}: driver {chosen!r} does not claim {fstype!r}"
                    )
            elif len(names) > 1:
                raise DriverConflictError(fstype, *sorted(names)[:2])
            else:
                chosen = names[0]
            if "*" in fstype or "?" in fstype:
                self._patterns.append((fstype, chosen))
            else:
                self._owner[fstype] = chosen
        for fstype, chosen in self.config.prefer.items():
            if fstype not in claims:
                self._owner.setdefault(fstype, chosen)
        # Longer patterns are more specific: "fuse.sshfs*" before "fuse.*".
        self._patterns.sort(key=lambda p: (-len(p[0]), p[0]))

    # -- the registry ----------------------------------------------------------------------

    def owner(self, fstype: str) -> str:
        """The name of the driver that handles ``fstype`` (``generic`` if nobody claims it)."""
        name = self._owner.get(fstype)
        if name is not None:
            return name
        for pattern, chosen in self._patterns:
            if fnmatch.fnmatchcase(fstype, pattern):
                return chosen
        if self._fallback is None:
            raise DriverError(
                FALLBACK_DRIVER, f"no driver for fstype {fstype!r} and no fallback loaded"
            )
        return self._fallback

    def info(self, name: str) -> DriverInfo:
        return self.drivers[name]

    def state_type(self, full_name: str) -> type[DriverState] | None:
        """The DriverState class whose message has this protobuf full name."""
        for info in self.drivers.values():
            for st in info.state_types:
                if st.MESSAGE.DESCRIPTOR.full_name == full_name:
                    return st
        return None

    # -- calling ---------------------------------------------------------------------------

    def _caller(self, hook: str, driver: str) -> Callable[..., Any]:
        key = (hook, driver)
        caller = self._callers.get(key)
        if caller is None:
            others = [i.obj for n, i in self.drivers.items() if n != driver]
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[key] = caller
        return caller

    def call(self, hook: str, driver: str, **kwargs: Any) -> Any:
        """Call ``hook`` on exactly ``driver`` (plus wrappers); errors are attributed to it."""
        try:
            return self._caller(hook, driver)(**kwargs)
        except DriverError as exc:
            if exc.driver == driver:
                raise
            raise DriverError(driver, f"{hook}: {exc}") from exc
        except CriuFwError as exc:
            raise DriverError(driver, str(exc)) from exc
        except Exception as exc:
            raise DriverError(driver, f"{hook} failed: {type(exc).__name__}: {exc}") from exc

    def call_for_fstype(self, hook: str, fstype: str, **kwargs: Any) -> Any:
        return self.call(hook, self.owner(fstype), **kwargs)


def load_drivers(
    config: DriverConfig | None = None, plugins: Iterable[object] = ()
) -> DriverManager:
    """A manager with every available driver loaded (nothing is loaded at import time)."""
    return DriverManager(config).load(plugins)
