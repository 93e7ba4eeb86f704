"""Every public name of the package is in docs/api.md: its last section indexes, module by
module, each name a user may import (a package's `__all__`; a module's top-level functions,
classes and assignments without a leading underscore), and this test compares that index with
the source, so a new public name must be documented (or made `_private`) and a removed one
leaves the index. `python tests/test_public_names.py` prints the index as it should read."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE, API = ROOT / "th_distill", ROOT / "docs" / "api.md"
HEADING = "## Every public name"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def defined_names(tree: ast.Module) -> list[str]:
  """A module's `__all__` if it has one, else what its top level defines (not imports)."""
  names = []
  for node in tree.body:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      names.append(node.name)
    elif isinstance(node, ast.Assign | ast.AnnAssign):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        for name in ast.walk(target):
          if isinstance(name, ast.Name):
            if name.id == "__all__":
              return list(ast.literal_eval(node.value))
            names.append(name.id)
  return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def public_names() -> dict[str, list[str]]:
  """{module: its public names} for every module of the package without a leading underscore."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    name = module_name(path)
    if not any(part.startswith("_") for part in name.split(".")):
      found[name] = sorted(defined_names(ast.parse(path.read_text())), key=str.lower)
  return found


def index_text(names: dict[str, list[str]]) -> str:
  lines = [
    HEADING,
    "",
    "An index, module by module, of every name the package makes public (the tables above",
    "describe the main ones); `tests/test_public_names.py` checks it against the source and",
    "prints it as it should read.",
    "",
  ]
  for module, module_names in names.items():
    listed = ", ".join(f"`{n}`" for n in module_names) if module_names else "(none)"
    lines.append(f"- `{module}`: {listed}")
  return "\n".join(lines) + "\n"


def documented_index() -> dict[str, list[str]]:
  text = API.read_text()
  assert HEADING in text, f"docs/api.md lacks its section {HEADING!r}"
  index = {}
  for line in text.split(HEADING, 1)[1].splitlines():
    match = re.match(r"- `(th_distill[\w.]*)`: (.*)$", line)
    if match:
      index[match.group(1)] = re.findall(r"`([^`]+)`", match.group(2))
  return index


def test_every_public_name_is_in_the_api_docs():
  assert documented_index() == public_names()


def test_the_index_is_the_last_section():
  """Nothing after the index (its reader stops at the end of the file)."""
  assert API.read_text().endswith(index_text(public_names()))


if __name__ == "__main__":
  print(index_text(public_names()), end="")
