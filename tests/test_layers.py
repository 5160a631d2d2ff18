"""The layers of docs/architecture.md hold: every import in the project's packages goes to the
same or a lower layer of that document's table, no modules import each other in a cycle, and
the library imports the data stack only from its application edge (``mdm_jax/api.py`` and
``mdm_jax/run_io.py``), inside functions.

The layer order is read from the table itself (its first column numbers the layers, its third
names their modules as paths), so the document and this check cannot drift apart. Imports are
read with ``ast``, not by importing: module-level imports and those inside functions (lazy)
alike, relative ones resolved.
"""
from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("mdm_jax", "pallas_kernels", "data", "experiments")
DOC = ROOT / "docs" / "architecture.md"
# The library may reach the data stack only here, and only inside functions (stated under
# the table in docs/architecture.md): `import mdm_jax` must not load grain or sentencepiece.
LAZY_DATA_EDGES = ("mdm_jax/api.py", "mdm_jax/run_io.py")


def read_layers(text: str) -> list[tuple[int, str, tuple[str, ...]]]:
  """(number, name, module paths) of each row of the table under '## Layers'."""
  section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
  layers = []
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 3 and cells[0].isdigit():
      paths = tuple(p for p in re.findall(r"`([^`]+)`", cells[2])
                    if "/" in p and (p.endswith("/") or p.endswith(".py")))
      layers.append((int(cells[0]), cells[1], paths))
  return layers


def layer_of(path: str, layers) -> tuple[int, str] | None:
  """The layer whose listed path is `path` itself or its longest enclosing folder."""
  best = None
  for number, name, paths in layers:
    for p in paths:
      if path == p or (p.endswith("/") and path.startswith(p)):
        if best is None or len(p) > best[0]:
          best = (len(p), number, name)
  return best and best[1:]


def modules() -> dict[str, str]:
  """Dotted module name -> path relative to the repository, for every file of PACKAGES."""
  found = {}
  for package in PACKAGES:
    for f in sorted((ROOT / package).rglob("*.py")):
      rel = f.relative_to(ROOT)
      parts = rel.with_suffix("").parts
      found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel.as_posix()
  return found


class _Imports(ast.NodeVisitor):
  """(line, imported module, inside a function) of every import of a project module."""

  def __init__(self, module: str, is_package: bool, known: dict[str, str]):
    self.module, self.is_package, self.known = module, is_package, known
    self.depth, self.found = 0, []

  def _function(self, node):
    self.depth += 1
    self.generic_visit(node)
    self.depth -= 1

  visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

  def _add(self, node, name: str):
    if name.split(".")[0] in PACKAGES:
      self.found.append((node.lineno, name, self.depth > 0))

  def visit_Import(self, node):
    for alias in node.names:
      self._add(node, alias.name)

  def visit_ImportFrom(self, node):
    base = node.module or ""
    if node.level:
      here = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
      here = here[:len(here) - (node.level - 1)]
      base = ".".join(here + ([node.module] if node.module else []))
    for alias in node.names:
      full = f"{base}.{alias.name}"   # `from pkg import module` imports the module itself
      self._add(node, full if full in self.known else base)


def import_graph():
  """[(importer path, line, imported module, imported path, lazy)] over PACKAGES."""
  known = modules()
  edges = []
  for name, path in known.items():
    visitor = _Imports(name, path.endswith("__init__.py"), known)
    visitor.visit(ast.parse((ROOT / path).read_text(), path))
    for line, target, lazy in visitor.found:
      # `import a.b.c` of a name that is no module (an attribute): its nearest module.
      while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
      if target in known:
        edges.append((path, line, target, known[target], lazy))
  return edges


def upward_imports(edges, layers) -> list[str]:
  """One line per import that goes to a higher layer or to an unlisted module."""
  problems = []
  for src, line, target, dst, _ in edges:
    a, b = layer_of(src, layers), layer_of(dst, layers)
    if a is None or b is None:
      continue  # reported by test_every_module_has_a_layer
    if b[0] > a[0]:
      problems.append(
          f"{src}:{line} imports {target} ({dst}: layer {b[0]}, {b[1]}) from layer {a[0]}, "
          f"{a[1]}: imports go to the same or a lower layer of docs/architecture.md; move "
          "the code it needs down a layer or pass it in as an argument")
  return problems


def cycles(edges) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  graph = {}
  for src, _, _, dst, _ in edges:
    if src != dst:
      graph.setdefault(src, set()).add(dst)
      graph.setdefault(dst, set())
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


LAYERS = read_layers(DOC.read_text())
EDGES = import_graph()


def test_the_table_numbers_its_layers_in_order():
  assert len(LAYERS) >= 8, f"no layer table found under '## Layers' in {DOC}"
  assert [n for n, _, _ in LAYERS] == list(range(1, len(LAYERS) + 1))
  assert all(paths for _, _, paths in LAYERS), "every layer names its modules as paths"


def test_every_module_has_a_layer():
  unlisted = [path for path in modules().values() if layer_of(path, LAYERS) is None]
  assert not unlisted, (f"{unlisted} belong to no layer of docs/architecture.md's table: add "
                        "each (or its folder) to the row of the layer it belongs to")


def test_no_import_goes_up_a_layer():
  problems = upward_imports(EDGES, LAYERS)
  assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_cycle():
  found = cycles(EDGES)
  assert not found, "import cycles (lazy imports included): " + "; ".join(
      " <-> ".join(c) for c in found)


def test_only_the_api_imports_data_and_only_inside_functions():
  bad = [f"{src}:{line} imports {target}" + (" at module level" if not lazy else "")
         for src, line, target, dst, lazy in EDGES
         if src.startswith("mdm_jax/") and dst.startswith("data/")
         and (src not in LAZY_DATA_EDGES or not lazy)]
  assert not bad, ("the library reaches the data stack only from " + " and ".join(LAZY_DATA_EDGES)
                   + ", inside a function (import mdm_jax must not load it): " + "; ".join(bad))
  assert any(src in LAZY_DATA_EDGES and dst.startswith("data/") for src, _, _, dst, _ in EDGES)


def test_the_checks_catch_what_they_are_for():
  """The checker against hand-made graphs: an upward edge, a lazy one and a three-cycle."""
  layers = [(1, "low", ("pkg/low.py",)), (2, "high", ("pkg/high/",))]
  up = [("pkg/low.py", 3, "pkg.high.x", "pkg/high/x.py", True)]
  down = [("pkg/high/x.py", 5, "pkg.low", "pkg/low.py", False)]
  assert len(upward_imports(up, layers)) == 1 and "pkg/low.py:3" in upward_imports(up, layers)[0]
  assert upward_imports(down, layers) == []
  ring = [("a", 1, "b", "b", False), ("b", 1, "c", "c", True), ("c", 1, "a", "a", False),
          ("c", 2, "d", "d", False)]
  assert cycles(ring) == [["a", "b", "c"]]
  assert cycles(ring[:2] + ring[3:]) == []
