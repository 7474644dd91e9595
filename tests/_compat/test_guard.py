"""Nothing outside geo_ws._compat touches another library's private names.

The guard reads geo_ws's sources (attribute reads of names geo_ws never defines,
``getattr``-style strings, private imports, known undocumented internals) and its
classes (methods that override a private method of a foreign base class).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import geo_ws

PACKAGE = Path(geo_ws.__file__).parent
SOURCES = sorted(
    path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "_compat"
)
#: Internals without an underscore that no library documents (named in the review).
UNDOCUMENTED = re.compile(
    r"\b(ggevent|GeventResponse|wsgi_input|headers_sent|_got_first_request|request_ctx"
    r"|RequestContext|url_adapter)\b|[\"']access_log_enabled[\"']"
)


#: Packages whose private names geo_ws may touch only through geo_ws._compat.
FOREIGN = ("gevent", "greenlet", "gunicorn", "flask", "werkzeug", "geventwebsocket", "asyncio")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


#: Private names of those packages that geo_ws also uses for its own members: on another
#: object than ``self`` they are the foreign ones (``sock._wait`` is gevent's).
SHARED_NAMES = frozenset(("_wait", "_handle", "_read_event", "_write_event", "_get_current_object"))


def _own_names() -> set[str]:
    """The names geo_ws defines: functions, classes, stored attributes, slots."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "_compat":
            continue
        tree = ast.parse(path.read_text())
        # ``_servers: list[Server]`` declares what a base class sets: not a definition.
        declared = {
            id(node.target)
            for node in ast.walk(tree)
            if isinstance(node, ast.AnnAssign) and node.value is None
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif id(node) in declared:
                continue
            elif isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Store):
                names.add(node.attr if isinstance(node, ast.Attribute) else node.id)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[-1])
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__slots__" for target in node.targets
            ):
                names.update(
                    item.value
                    for item in ast.walk(node.value)
                    if isinstance(item, ast.Constant) and isinstance(item.value, str)
                )
    return names


def _uses(path: Path, own: set[str]) -> list[str]:
    """A private name is suspect when geo_ws never defines it, or when it is one of the
    shared names read off another object than ``self``."""

    def suspect(name: str, on: ast.expr | None = None) -> bool:
        on_self = isinstance(on, ast.Name) and on.id in ("self", "cls")
        return _private(name) and (name not in own or (not on_self and name in SHARED_NAMES))

    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and suspect(node.attr, node.value):
            found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".") + [alias.name for alias in node.names]
            if any(_private(part) for part in parts):
                found.append(f"{where}: from {node.module} import ...")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and suspect(node.args[1].value)
        ):
            found.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if UNDOCUMENTED.search(code) and not code.lstrip().startswith(('"', "'")):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    return found


def test_no_private_names_outside_compat() -> None:
    own = _own_names()
    found = [use for path in SOURCES for use in _uses(path, own)]
    assert not found, "private internals outside geo_ws._compat:\n" + "\n".join(found)


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(geo_ws.__path__, "geo_ws."):
        if not info.name.startswith("geo_ws._compat") and info.name != "geo_ws.__main__":
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_no_overrides_of_private_methods(name: str) -> None:
    """A geo_ws class overrides no private method of a foreign base class."""
    module = importlib.import_module(name)
    found = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != name:
            continue
        foreign = [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in FOREIGN]
        for attribute in vars(cls):
            if attribute == "_abc_impl":  # ABCMeta sets it on every subclass
                continue
            if _private(attribute) and any(attribute in vars(base) for base in foreign):
                found.append(f"{cls.__qualname__}.{attribute}")
    assert not found, f"{name} overrides private methods: {found}"
