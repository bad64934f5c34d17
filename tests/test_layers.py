"""Checks, by parsing the source, that catmqtt's low layers import nothing heavy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import catmqtt

PACKAGE = Path(catmqtt.__file__).parent
LAYER0 = ("blocks", "chunkcache", "errors", "fsutil", "testing", "topics", "schema", "slices", "wire")
CLIENT_SIDE = ("arrays", "client", "client_base", "client_reader", "client_view", "dtypes", "errors")
# The client decodes chunks with blosc2 (only when it fetches: test_api checks
# that `import catmqtt` leaves it out), but never needs a server library.
SERVER_ONLY = ("flask", "amqtt", "h5py", "paho", "watchdog")


def imports(module: str) -> tuple[set[str], set[str]]:
    """Return the imports of catmqtt.`module`, as `imports_of` does."""
    return imports_of((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


def imports_of(source: str) -> tuple[set[str], set[str]]:
    """Return the top-level names of the absolute imports in `source`, and its relative imports.

    Every import statement counts, also those inside functions.
    """
    tree = ast.parse(source)
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
            elif node.level == 1 and node.module:
                relative.add(node.module.split(".")[0])
            elif node.level == 1:
                relative.update(alias.name for alias in node.names)  # from . import x
            else:
                relative.add("." * node.level + (node.module or ""))
    return absolute, relative


def closure(modules: tuple[str, ...]) -> set[str]:
    """Return `modules`, the package itself and every catmqtt module they import, transitively."""
    seen: set[str] = set()
    todo = ["__init__", *modules]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(name for name in imports(module)[1] if (PACKAGE / f"{name}.py").exists())
    return seen


@pytest.mark.parametrize("module", LAYER0)
def test_layer0_imports_only_stdlib_and_layer0(module: str) -> None:
    absolute, relative = imports(module)
    assert absolute <= set(sys.stdlib_module_names), absolute - set(sys.stdlib_module_names)
    assert relative <= set(LAYER0), relative - set(LAYER0)


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_client_side_imports_no_server_library(module: str) -> None:
    absolute, _ = imports(module)
    assert not absolute & set(SERVER_ONLY)


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_client_side_closure_imports_no_server_library(module: str) -> None:
    # Importing catmqtt.<module> also runs catmqtt/__init__.py and what it imports.
    for name in sorted(closure((module,))):
        absolute, _ = imports(name)
        assert not absolute & set(SERVER_ONLY), (module, name, absolute & set(SERVER_ONLY))


def test_imports_of_sees_every_form() -> None:
    source = (
        "import os, xml.dom\n"
        "from collections.abc import Sequence\n"
        "from . import errors, topics as t\n"
        "from .slices import parse_slice\n"
        "from ..up import x\n"
        "def f():\n"
        "    import flask\n"
        "    from paho.mqtt import client\n"
    )
    absolute, relative = imports_of(source)
    assert absolute == {"os", "xml", "collections", "flask", "paho"}
    assert relative == {"errors", "topics", "slices", "..up"}
