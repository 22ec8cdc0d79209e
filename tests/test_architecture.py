"""The layout is the architecture: which folder may import which, and no import circles.

Every ``import`` of the package is read from the source (module level, inside functions and under
``TYPE_CHECKING`` alike), so a circle that is "only for types" still counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import sip_controller

PACKAGE = Path(sip_controller.__file__).parent

#: for each layer (a top-level folder, or a root module), the layers it may import; its own is always allowed.
#: Read top-down: the CLI starts the service, the service runs calls, a call uses what the model is given
#: (agent) and OpenAI's wire (realtime); Twilio's wire (telephony) sits beside realtime and may use its retries and
#: HTTP errors. config is the settings root. simulator and bench are tooling.
ALLOWED: dict[str, set[str]] = {
    "realtime": set(),
    "telephony": {"realtime"},
    "agent": {"realtime", "config"},
    "config": {"agent", "calls"},
    "state": {"calls", "config"},
    "calls": {"agent", "realtime", "telephony", "config", "state"},
    "service": {"calls", "agent", "realtime", "telephony", "config", "state", "package"},
    "simulator": {"service", "calls", "agent", "realtime", "telephony", "config", "state", "package"},
    "bench": {"service", "calls", "agent", "realtime", "telephony", "config", "state", "package"},
    "cli": {"service", "calls", "agent", "realtime", "telephony", "config", "state", "simulator", "bench", "package"},
    "__main__": {"cli"},
    "package": set(),
}
PRODUCTION = ("service", "calls", "agent", "realtime", "telephony", "state", "config")


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str) -> str:
    """The module an imported name lives in (``pkg.mod.Thing`` -> ``pkg.mod``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> Iterator[str]:
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (_resolve(a.name) for a in node.names if a.name.split(".")[0] == "sip_controller")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != "sip_controller":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                yield full if full in modules() else _resolve(source)


@cache
def graph() -> dict[str, frozenset[str]]:
    return {m: frozenset(i for i in _imports(m) if i and i != m) for m in modules()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def _cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_scan_sees_the_package() -> None:
    """Guard against a scan that silently finds nothing (and so passes everything)."""
    edges = graph()
    assert "sip_controller.calls.machine" in edges
    assert "sip_controller.calls.registry" in edges["sip_controller.service.app"]
    assert sum(len(v) for v in edges.values()) > 100


def test_no_import_circles_type_only_ones_included() -> None:
    assert _cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    edges = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert _cycles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer(m) in PRODUCTION))
def test_production_never_imports_the_simulator_or_the_bench(module: str) -> None:
    tooling = sorted(i for i in graph()[module] if layer(i) in ("simulator", "bench"))
    assert tooling == [], f"{module} imports {tooling}"


def test_every_layer_imports_only_what_it_may() -> None:
    wrong = sorted(
        f"{m} -> {i}"
        for m, imported in graph().items()
        for i in imported
        if layer(i) != layer(m) and layer(i) not in ALLOWED[layer(m)]
    )
    assert wrong == []


def test_every_folder_is_a_known_layer() -> None:
    """A new top-level folder must be placed in the layer table (and in docs/architecture.md)."""
    assert {layer(m) for m in modules()} <= set(ALLOWED)


#: the pure core (design principle 1): the call machine, its features, what it takes in and gives out. The time
#: comes in with each input and a timer is an action, so none of them reads a clock, sleeps or does I/O.
PURE = sorted(
    m
    for m in modules()
    if m.startswith("sip_controller.calls.features.")
    or m
    in {
        "sip_controller.calls.machine",
        "sip_controller.calls.inputs",
        "sip_controller.calls.actions",
        "sip_controller.calls.states",
        "sip_controller.calls.lines",
        "sip_controller.calls.tags",
        "sip_controller.calls.voicemail",
    }
)
#: standard modules the pure core never imports: clocks, the event loop, randomness, the operating system
IMPURE_IMPORTS = frozenset({"time", "asyncio", "random", "secrets", "os", "socket", "threading", "uuid"})
#: calls that read a clock, whatever they are called on (``datetime.now()``, ``date.today()``, ``loop.time()``)
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"})


def _impurities(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in IMPURE_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] in IMPURE_IMPORTS:
                found.append(f"from {node.module} import …")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_CALLS:
            found.append(f"{ast.unparse(node.func)}() on line {node.lineno}")
    return found


def test_the_purity_scan_finds_a_clock() -> None:
    source = "import time\nfrom datetime import datetime\nx = datetime.now()\ny = loop.time()\n"
    assert _impurities(source) == ["import time", "datetime.now() on line 3", "loop.time() on line 4"]


@pytest.mark.parametrize("module", PURE)
def test_the_machine_and_its_features_read_no_clock(module: str) -> None:
    assert len(PURE) >= 10
    assert _impurities(modules()[module].read_text()) == []
