"""The hookspecs are the contract: each is documented as one, and each is exercised on a real
driver by at least one named test."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from criu_fw.api import hookspecs
from criu_fw.api.hooks import SIGNATURES, Hooks
from criu_fw.api.loader import HOOKS, DriverManager

TESTS = Path(__file__).parent

#: hook -> tests that call it on a real driver (built-in, or the pip-installed third-party
#: fixture). Add yours here when you test a hook; the test below keeps the list honest.
CALLED_IN: dict[str, list[str]] = {
    hook: ["test_plugins_discovery.py::test_every_hook_of_the_thirdparty_driver_on_real_mounts"]
    for hook in HOOKS
}


def spec_names() -> list[str]:
    relay = DriverManager().pm.hook
    return sorted(name for name in vars(relay) if not name.startswith("_"))


def test_the_registry_knows_every_hook() -> None:
    assert sorted(HOOKS) == spec_names()
    assert set(CALLED_IN) == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_is_documented_as_a_contract(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert "Phase: dump" in doc or "Phase: restore" in doc, hook
    assert ":returns:" in doc, hook
    assert "``None``" in doc, f"{hook}: say what returning None means"
    assert ".. versionadded::" in doc, hook
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{hook}: parameter {param} is not documented"
    # Typed parameters and a typed result (annotations are strings: the module defers them).
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, hook
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_is_called_on_a_real_driver_by_a_named_test(hook: str) -> None:
    for ref in CALLED_IN[hook]:
        file, _, name = ref.partition("::")
        module = ast.parse((TESTS / file).read_text())
        (func,) = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == name]
        calls = [
            n for n in ast.walk(func)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == hook
        ]  # fmt: skip
        assert calls, f"{ref} does not call {hook!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_the_typed_facade_takes_each_hooks_arguments_in_the_specs_order(hook: str) -> None:
    """The facade's fast path passes arguments by position, pluggy's by name: both must be
    the spec's, in its order, and the method's return type the spec's."""
    spec = inspect.signature(getattr(hookspecs, hook))
    assert SIGNATURES[hook] == tuple(spec.parameters)
    method = inspect.signature(getattr(Hooks, hook))
    assert tuple(method.parameters) == ("self", "driver", *spec.parameters)
    assert method.return_annotation == spec.return_annotation
