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

``prefer`` also settles two fallbacks (``--prefer '*=mygeneric'``) and may route an fstype
nobody claims to a loaded driver. Patterns (``fuse.*``) lose to exact names, and a longer
pattern beats a shorter one: specificity, never load order, decides.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pluggy

from ..errors import DriverConflictError, DriverError, DriverLoadError, UsageError
from . import entrypoints, hookspecs
from .base import DriverState, api_problem, declared_fstypes
from .hooks import SIGNATURES, Hooks

if TYPE_CHECKING:
    import importlib.metadata

ENTRY_POINT_GROUP = "criu_fw.fsdrivers"
BUILTIN_DISTRIBUTION = "criu-fw"
#: The ``distribution`` of plugins handed to :meth:`DriverManager.load` as objects.
PASSED_BY_CALLER = "<passed by caller>"
FALLBACK_DRIVER = "generic"
HOOKS = tuple(SIGNATURES)


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting the changes that decide whether a direct call is exact.

    :class:`~criu_fw.api.hooks.Hooks` calls a hook's only implementation directly (without pluggy's
    per-call machinery) when nothing else would run. Registering, unregistering or blocking a
    plugin, adding hookspecs, and hook-call monitoring (``add_hookcall_monitoring``,
    ``enable_tracing``) bump :attr:`generation`, which drops the decisions made so far;
    monitoring also turns direct calls off for good, so monitors see every call.
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.generation = 0
        self.monitored = False

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self.generation += 1

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        # Dunder names (half of a driver's dir(): object's own) are never hooks; pluggy's
        # static lookup of each was a quarter of loading the drivers.
        if name.startswith("__") and name.endswith("__"):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self.generation += 1

    def add_hookspecs(self, module_or_class: Any) -> None:
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self.generation += 1

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        self.monitored = True
        self.generation += 1
        return super().add_hookcall_monitoring(before, after)


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
        return "built-in" if self.builtin else f"{self.distribution} {self.version}".rstrip()

    @property
    def state_types(self) -> tuple[type[DriverState], ...]:
        return tuple(getattr(self.obj, "state_types", ()))


@attrs.frozen
class LoadProblem:
    """A driver that could not be loaded and was skipped."""

    name: str
    distribution: str
    reason: str
    version: str = ""

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}".rstrip()

    def __str__(self) -> str:
        return f"driver {self.name!r} from distribution {self.origin} skipped: {self.reason}"


class _EntryPoint(Protocol):
    """An entry point of either reader (``name`` and ``load()`` are all the loader uses)."""

    @property
    def name(self) -> str: ...

    def load(self) -> Any: ...


def _found(group: str) -> list[tuple[_EntryPoint, str, str]]:
    """The group's entry points with their distribution's name and version: read directly
    (:mod:`.entrypoints`), or through :mod:`importlib.metadata` where that cannot."""
    direct = entrypoints.entry_points(group)
    if direct is not None:
        out: list[tuple[_EntryPoint, str, str]] = []
        for ep in direct:
            name, version = entrypoints.name_and_version(ep.dist)
            out.append((ep, name or os.path.basename(ep.dist), version or ""))
        return out
    from importlib import metadata

    return [(ep, *_dist_of(ep)) for ep in metadata.entry_points(group=group)]


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("unknown", "")
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name, version = entrypoints.name_and_version_of(text)
    if name is None or version is None:
        md = dist.metadata  # anything unusual: the standard parser
        return (md["Name"] or dist.name, md["Version"] or dist.version)
    return (name, version)


class DriverManager:
    """The plugin manager of one dump or restore: drivers, registry and typed hook calls."""

    def __init__(self, config: DriverConfig | None = None) -> None:
        # No config given: the documented environment variables (CRIU_FW_*) apply.
        self.config = config if config is not None else DriverConfig.from_env()
        self.pm = _PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.drivers: dict[str, DriverInfo] = {}
        self.problems: list[LoadProblem] = []
        self._owner: dict[str, str] = {}
        #: (pattern, driver), most specific first; driver None: contested (see conflicts).
        self._patterns: list[tuple[str, str | None]] = []
        self._fallback: str | None = None
        self._hooks: Hooks | None = None
        #: fstypes (or patterns, "*" for the fallback) that several drivers claim: the names.
        self.conflicts: dict[str, tuple[str, ...]] = {}
        #: Registered plugins that own no fstype (tracing, dry run): name -> object.
        self.wrappers: dict[str, object] = {}
        #: Blocked names that no installed driver or passed plugin has (a typo blocks
        #: nothing): sorted, for the caller to warn about.
        self.unknown_blocked: tuple[str, ...] = ()

    # -- loading ---------------------------------------------------------------------------

    def load(self, plugins: Iterable[object] = ()) -> DriverManager:
        """Load the entry-point drivers, then ``plugins`` (objects passed by a library caller),
        and build the fstype registry. Returns ``self``."""
        for name in self.config.blocked:
            self.pm.set_blocked(name)
        found = _found(ENTRY_POINT_GROUP)
        # A deterministic order whatever sys.path says: by name, the built-in first, then by
        # distribution; of two entry points with one name the later one is reported.
        found.sort(key=lambda f: (f[0].name, f[1] != BUILTIN_DISTRIBUTION, f[1]))
        for ep, dist, version in found:
            if ep.name in self.config.blocked:
                continue
            if dist != BUILTIN_DISTRIBUTION and not self.config.external:
                continue
            if ep.name in self.drivers:
                self._problem(ep.name, dist, f"a driver named {ep.name!r} is already loaded "
                              f"from {self.drivers[ep.name].origin}", None, version=version)
                continue
            try:
                obj = ep.load()
                if isinstance(obj, type):  # an entry point naming the class, not an instance
                    obj = obj()
            # A broken third-party package must not break us; one that calls sys.exit() at
            # import neither (KeyboardInterrupt still stops everything).
            except (Exception, SystemExit) as exc:
                self._problem(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}", exc,
                              version=version)
                continue
            self._add(ep.name, obj, dist, version)
        names = {ep.name for ep, _, _ in found}
        for obj in plugins:
            name = str(getattr(obj, "name", None) or type(obj).__name__)
            names.add(name)
            if self.pm.is_blocked(name):
                continue
            # The caller's own objects: a mistake in them is the caller's bug, never skipped.
            self._add(name, obj, PASSED_BY_CALLER, "", strict=True)
        self.unknown_blocked = tuple(sorted(self.config.blocked - names))
        self._build_registry()
        return self

    def _problem(
        self, name: str, dist: str, reason: str, exc: BaseException | None,
        strict: bool = False, version: str = "",
    ) -> None:
        reason = " ".join(reason.split())  # pluggy's messages span lines; ours are one line
        if self.config.strict or strict:
            raise DriverLoadError(name, f"{dist} {version}".rstrip(), reason) from exc
        self.problems.append(LoadProblem(name, dist, reason, version))

    def _add(self, name: str, obj: object, dist: str, version: str, strict: bool = False) -> None:
        if name in self.drivers or name in self.wrappers:
            self._problem(name, dist, f"a plugin named {name!r} is already loaded", None, strict,
                          version)
            return
        why = api_problem(obj)
        if why is not None:
            self._problem(name, dist, why, None, strict, version)
            return
        try:
            fstypes = declared_fstypes(obj)
            self.pm.register(obj, name=name)
        except Exception as exc:
            self._problem(name, dist, f"registration failed: {exc}", exc, strict, version)
            return
        try:
            # Catches misspelled hook names (``def parse_mounts``) right away.
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(obj)
            self._problem(name, dist, str(exc), exc, strict, version)
            return
        hooks = tuple(
            h.name for h in (self.pm.get_hookcallers(obj) or ()) if h.name in HOOKS
        )
        if not fstypes and not getattr(obj, "fallback", False):
            # A cross-cutting plugin (tracing, dry run): it wraps hooks, owns no fstype.
            self.wrappers[name] = obj
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
        fallbacks = sorted(i.name for i in self.drivers.values() if i.fallback)
        for info in self.drivers.values():
            for t in info.fstypes:
                claims.setdefault(t, []).append(info.name)
        if fallbacks:
            claims["*"] = fallbacks  # "*" in --prefer picks between fallbacks
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
                # Recorded, not raised: a contested fstype fails where it is used (owner()),
                # so that one bad package cannot break `criu-fw drivers` or other fstypes.
                self.conflicts[fstype] = tuple(sorted(names))
                if self.config.strict:
                    self.check_conflicts()
                if fstype != "*" and ("*" in fstype or "?" in fstype):
                    self._patterns.append((fstype, None))
                continue
            else:
                chosen = names[0]
            if fstype == "*":
                self._fallback = chosen
            elif "*" in fstype or "?" in fstype:
                self._patterns.append((fstype, chosen))
            else:
                self._owner[fstype] = chosen
        for fstype, chosen in self.config.prefer.items():
            if fstype not in claims and fstype != "*":
                if chosen not in self.drivers:
                    raise UsageError(
                        f"--prefer {fstype}={chosen}: no driver named {chosen!r} is loaded"
                    )
                self._owner.setdefault(fstype, chosen)
        # Longer patterns are more specific: "fuse.sshfs*" before "fuse.*".
        self._patterns.sort(key=lambda p: (-len(p[0]), p[0]))

    def check_conflicts(self) -> None:
        """Raise :class:`DriverConflictError` for the first fstype that several drivers claim
        and the configuration does not settle (``owner()`` raises it for that fstype)."""
        for fstype, names in sorted(self.conflicts.items()):
            raise DriverConflictError(fstype, names[0], names[1])

    # -- the registry ----------------------------------------------------------------------

    def owner(self, fstype: str) -> str:
        """The name of the driver that handles ``fstype`` (``generic`` if nobody claims it).

        Raises :class:`DriverConflictError` naming both drivers when two claim ``fstype``
        and ``--prefer`` picks neither.
        """
        name = self._owner.get(fstype)
        if name is not None:
            return name
        if fstype in self.conflicts:
            names = self.conflicts[fstype]
            raise DriverConflictError(fstype, names[0], names[1])
        for pattern, chosen in self._patterns:
            if fnmatch.fnmatchcase(fstype, pattern):
                if chosen is None:
                    names = self.conflicts[pattern]
                    raise DriverConflictError(pattern, names[0], names[1])
                return chosen
        if "*" in self.conflicts:
            names = self.conflicts["*"]
            raise DriverConflictError("*", names[0], names[1])
        if self._fallback is None:
            if FALLBACK_DRIVER in self.config.blocked:
                # Said plainly: the usual cause is the user's own --block-driver generic.
                raise DriverError(
                    FALLBACK_DRIVER,
                    f"no driver for fstype {fstype!r}: the fallback driver {FALLBACK_DRIVER!r}, "
                    "which handles every fstype no other driver claims, is blocked "
                    "(--block-driver or CRIU_FW_BLOCK_DRIVERS) and no other fallback is loaded",
                )
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

    @property
    def hooks(self) -> Hooks:
        """The typed hook calls (:class:`~criu_fw.api.hooks.Hooks`), built once per manager."""
        if self._hooks is None:
            self._hooks = Hooks(self)
        return self._hooks


def resolve_manager(
    manager: DriverManager | None = None,
    plugins: Iterable[object] = (),
    config: DriverConfig | None = None,
) -> DriverManager:
    """The drivers a library entry point uses, the same way for every one of them (dump,
    restore, verify, the image readers): the caller's ``manager`` as it is (loaded once by the
    caller, with its tracer or dry-run wrappers), else a manager loaded here from ``plugins``
    and ``config`` (``None``: the CRIU_FW_* environment). Nothing else loads drivers."""
    plugins = tuple(plugins)
    if manager is not None:
        if plugins or config is not None:
            raise UsageError("give manager= or plugins=/config=, not both")
        return manager
    return DriverManager(config).load(plugins)


def load_drivers(
    config: DriverConfig | None = None, plugins: Iterable[object] = ()
) -> DriverManager:
    """A manager with every available driver loaded (nothing is loaded at import time).

    ``config=None`` reads the CRIU_FW_* environment variables (:meth:`DriverConfig.from_env`).
    """
    return DriverManager(config).load(plugins)
