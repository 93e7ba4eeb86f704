"""The package's import graph, read from the source with `ast` (imports inside functions and
under `if TYPE_CHECKING:` included): no circle between modules, none between the package's
parts (each sub-package and top-level module one node), and no part importing one above it in
`LAYERS`, the order docs/architecture.md draws."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "th_distill"

# Bottom -> top; a part may import only parts before it (its own group's earlier ones included).
LAYERS = (
  (
    "errors",
    "boundary",
    "models",
    "divergences",
    "sampling_checks",
    "sampling",
    "partitioning",
  ),  # numerics
  ("observing", "detection", "data", "config", "rundir", "training", "oracle"),  # a run's parts
  ("cli", "planning", "stages", "results"),  # assembly
  ("experiment", "study", "detector_eval", "main"),  # the experiment and the command lines
)
ORDER = [part for layer in LAYERS for part in layer]


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, dict[str, int]]:
  """{module: {imported module: line}} for every th_distill module importing another."""
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}

  def resolve(name: str) -> str:
    while name not in files:  # `from pkg import NAME`: NAME is an attribute of pkg
      name = name.rpartition(".")[0]
    return name

  graph: dict[str, dict[str, int]] = {}
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = graph.setdefault(name, {})
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        targets = [f"{base}.{a.name}" for a in node.names]
      for target in targets:
        if target.split(".")[0] == "th_distill" and resolve(target) != name:
          edges.setdefault(resolve(target), node.lineno)
  return graph


def part(module: str) -> str:
  return module.split(".")[1] if "." in module else module


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one node (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  found = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def part_graph(graph: dict[str, dict[str, int]]) -> dict[str, set[str]]:
  parts: dict[str, set[str]] = {}
  for module, targets in graph.items():
    if module == "th_distill":  # the package's own __init__: above everything
      continue
    parts.setdefault(part(module), set()).update(
      part(t) for t in targets if part(t) != part(module)
    )
  return parts


@pytest.fixture(scope="module")
def graph():
  return import_graph()


def test_the_graph_is_read(graph):
  """The reader finds the imports it must (a broken reader would pass every test below)."""
  assert "th_distill.models.interface" in graph["th_distill.sampling"]
  assert "th_distill.training.steps" in graph["th_distill.training.program_builders"]
  assert set(part_graph(graph)) == set(ORDER)  # every part placed in LAYERS


def test_no_circle_between_modules(graph):
  assert circles({m: set(t) for m, t in graph.items()}) == []


def test_no_circle_between_parts(graph):
  assert circles(part_graph(graph)) == []


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
  upward = [
    f"{module}:{line} imports {target}"
    for module, targets in sorted(graph.items())
    for target, line in sorted(targets.items())
    if module != "th_distill"
    and part(target) != part(module)
    and ORDER.index(part(target)) > ORDER.index(part(module))
  ]
  assert upward == []


def test_the_picture_in_the_docs_is_this_order():
  """docs/architecture.md draws LAYERS, a row each, left to right as ordered here."""
  text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
  for layer in LAYERS:
    assert " ─ ".join(layer) in text, layer


def test_the_built_in_regimes_are_registered_under_the_names_the_config_knows():
  """The config checks regime names against its own registry (the sources are above it); every
  built-in name has its source once the sources are imported, registered first, in order."""
  from th_distill.config.run_config import BUILT_IN_REGIMES, REGIMES
  from th_distill.training import sources

  assert tuple(REGIMES)[: len(BUILT_IN_REGIMES)] == BUILT_IN_REGIMES
  assert all(sources.source_class(name).regime == name for name in BUILT_IN_REGIMES)
