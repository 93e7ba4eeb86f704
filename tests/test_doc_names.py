"""Every back-quoted dotted `th_distill.` name in docs/, the README and the package's docstrings
resolves: its longest prefix that is a module imports, and the rest are attributes of it, so a
renamed or moved name fails here instead of misleading a reader."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bth_distill(?:\.[A-Za-z_]\w*)+")


def spans(text: str) -> list[str]:
  """The back-quoted spans of `text` (inline code; fenced blocks are code, not names)."""
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  return re.findall(r"`([^`\n]+)`", text)


def names_in(text: str) -> set[str]:
  found = set()
  for span in spans(text):
    # `th_distill.planning.{flops,memory,plan}`: one name per member of the braces
    for head, members in re.findall(r"(th_distill(?:\.\w+)*)\.\{([\w, ]+)\}", span):
      found.update(f"{head}.{m.strip()}" for m in members.split(","))
    found.update(NAME.findall(re.sub(r"th_distill(?:\.\w+)*\.\{[\w, ]+\}", "", span)))
  return found


def docstrings(path: pathlib.Path) -> str:
  tree = ast.parse(path.read_text())
  nodes = [tree] + [
    n
    for n in ast.walk(tree)
    if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
  ]
  return "\n".join(ast.get_docstring(n) or "" for n in nodes)


def sources() -> dict[str, str]:
  """{where: text} of every document and docstring read."""
  found = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))}
  found["README.md"] = (ROOT / "README.md").read_text()
  for path in sorted((ROOT / "th_distill").rglob("*.py")):
    found[str(path.relative_to(ROOT))] = docstrings(path)
  return found


def resolves(name: str) -> bool:
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:i]))
    except ModuleNotFoundError:
      continue
    for j, attribute in enumerate(parts[i:], i + 1):
      if hasattr(value, attribute):
        value = getattr(value, attribute)
      else:  # a dataclass field without a default is not a class attribute
        fields = getattr(value, "__dataclass_fields__", {})
        return attribute in fields and j == len(parts)
    return True
  return False


def test_the_reader_finds_names():
  """The extraction works (a broken one would pass the test below on nothing)."""
  assert names_in(
    "see `th_distill.planning.{flops,memory}` and `x = th_distill.sampling.sample(m)`"
  ) == {
    "th_distill.planning.flops",
    "th_distill.planning.memory",
    "th_distill.sampling.sample",
  }
  assert not resolves("th_distill.sampling.no_such_name")
  assert not resolves("th_distill.no_such_module")
  assert sum(len(names_in(text)) for text in sources().values()) > 100


@pytest.mark.parametrize("where", sorted(sources()))
def test_every_back_quoted_name_resolves(where):
  stale = sorted(name for name in names_in(sources()[where]) if not resolves(name))
  assert stale == [], f"{where} names what does not exist: {stale}"
