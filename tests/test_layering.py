"""The map of the code (docs/design.md) holds: commands on top, library folders in layers,
no import circles, nothing imports a command, no project import hidden inside a function.

Every module's imports are read with `ast` (nothing is imported). The checks run on the
real tree, and on small fake trees that break each rule once, so a check that cannot
fail would show here.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("data_pipelines", "sora_jax")

# Each library folder and the folders it may import (besides itself). A folder imports
# only from folders below it; `sora_jax.training.input_pipeline` is the one module of
# training that evaluators may use.
BELOW_DIFFUSION = ("sora_jax.diffusion", "sora_jax.models", "sora_jax.core", "data_pipelines")
BELOW_MODEL_IO = ("sora_jax.model_io",) + BELOW_DIFFUSION
ALLOWED = {
  "data_pipelines": (),
  "sora_jax.core": ("data_pipelines",),
  "sora_jax.models": ("sora_jax.core", "data_pipelines"),
  "sora_jax.diffusion": BELOW_DIFFUSION[1:],
  "sora_jax.model_io": BELOW_DIFFUSION,
  "sora_jax.training": BELOW_MODEL_IO,
  "sora_jax.sampling": BELOW_MODEL_IO,
  "sora_jax.evaluators": ("sora_jax.sampling", "sora_jax.training.input_pipeline") + BELOW_MODEL_IO,
  "sora_jax.analysis": ("sora_jax.core", "data_pipelines"),
}
# data_pipelines modules that are libraries with a command line of their own
# (`python -m data_pipelines.tokenizer`): importing their library part is fine.
DATA_LIBRARIES_WITH_A_COMMAND = {
  "data_pipelines.synthetic",
  "data_pipelines.tfds_builder",
  "data_pipelines.tokenizer",
}
# Project imports allowed inside a function: each wraps a heavy optional third-party package.
LAZY = {
  # tensorflow_datasets takes seconds to import; only config.data.source="tfds" needs it.
  ("data_pipelines.pipeline", "data_pipelines.tfds_builder"),
}
# What analysis code (fits and plots over recorded results) must not import at the top.
NO_JAX = ("jax", "flax", "optax", "orbax")


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the packages under `root`."""
  out = {}
  for pkg in PACKAGES:
    for path in sorted((root / pkg).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      out[name] = path
  return out


def imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, bool, int, list[str]]]:
  """(module imported, inside a function?, line, names) for each import of a known module.

  `from pkg import mod` counts as importing `pkg.mod` when that is a module.
  """
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
      if isinstance(child, ast.Import):
        for a in child.names:
          out.append((a.name, in_function, child.lineno, []))
      elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
        names = [a.name for a in child.names]
        subs = [f"{child.module}.{n}" for n in names if f"{child.module}.{n}" in known]
        if subs:
          out.extend((s, in_function, child.lineno, []) for s in subs)
        else:
          out.append((child.module, in_function, child.lineno, names))
      visit(child, inner)

  visit(ast.parse(path.read_text()), False)
  return out


def is_command(name: str, path: pathlib.Path) -> bool:
  if name.startswith("sora_jax.") and name.count(".") == 1:
    return True  # Every top-level module of sora_jax is a command.
  if name in DATA_LIBRARIES_WITH_A_COMMAND:
    return False
  return '__name__ == "__main__"' in path.read_text()


def folder(name: str) -> str:
  parts = name.split(".")
  return parts[0] if parts[0] == "data_pipelines" else ".".join(parts[:2])


def violations(root: pathlib.Path) -> list[str]:
  """Every broken rule in the tree under `root`, one line each."""
  mods = modules(root)
  known = set(mods)
  graph, problems = {}, []
  for name, path in mods.items():
    rel = path.relative_to(root)
    edges = set()
    for target, in_function, line, names in imports(path, known):
      if target.split(".")[0] in NO_JAX and folder(name) == "sora_jax.analysis":
        if not in_function:
          problems.append(f"{rel}:{line}: analysis code imports {target} at import time")
        continue
      if target.split(".")[0] not in PACKAGES:
        continue
      target = (
        target
        if target in known
        else next(
          (m for m in sorted(known, key=len, reverse=True) if target.startswith(m + ".")), target
        )
      )
      edges.add(target)
      where = f"{rel}:{line}: {name} imports {target}"
      if in_function and (name, target) not in LAZY:
        problems.append(f"{where} inside a function (import it at the top, or fix the layering)")
      if target in known and is_command(target, mods[target]):
        problems.append(f"{where}, a command (move the shared part into a library folder)")
      if set(names) & {"main", "define_flags", "FLAGS"}:
        problems.append(f"{where}'s command-line part {sorted(names)}")
      src, dst = folder(name), folder(target)
      allowed = ALLOWED.get(src, ())
      if src in ALLOWED and dst != src and not any(target.startswith(a) for a in allowed):
        problems.append(f"{where}: {src} may import only {', '.join(allowed) or 'itself'}")
      if src not in ALLOWED and not is_command(name, path) and name not in PACKAGES:
        problems.append(f"{rel}: {name} is in no folder of the map (docs/design.md)")
    graph[name] = edges
  problems += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
  return sorted(set(problems))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected component with more than one module (or a self-loop)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in graph:
        continue
      if w not in index:
        connect(w)
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
      if len(component) > 1 or v in graph.get(v, ()):
        out.append(cycle_through(graph, set(component)))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def cycle_through(graph, component: set[str]) -> list[str]:
  """A concrete cycle inside a strongly connected component, for the error message."""
  start = min(component)
  path, seen, v = [start], {start}, start
  while True:
    v = min(w for w in graph[v] if w in component)
    path.append(v)
    if v in seen:
      return path[path.index(v) :]
    seen.add(v)


def test_the_code_follows_its_map():
  problems = violations(REPO)
  assert not problems, "\n".join(problems)


def test_every_top_level_module_of_sora_jax_runs_as_a_command():
  for path in sorted((REPO / "sora_jax").glob("*.py")):
    if path.name != "__init__.py":
      text = path.read_text()
      assert 'if __name__ == "__main__":' in text and "def main(" in text, path.name


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
  base = {
    "data_pipelines/__init__.py": "",
    "data_pipelines/schema.py": "",
    "sora_jax/__init__.py": "",
    "sora_jax/core/__init__.py": "",
    "sora_jax/core/configs.py": "from data_pipelines import schema\n",
    "sora_jax/models/__init__.py": "",
    "sora_jax/models/dit.py": "from sora_jax.core import configs\n",
    "sora_jax/training/__init__.py": "",
    "sora_jax/training/trainer.py": "from sora_jax.models import dit\n",
    "sora_jax/analysis/__init__.py": "",
    "sora_jax/analysis/fit.py": "import numpy\nfrom sora_jax.core import configs\n",
    "sora_jax/train.py": (
      "from sora_jax.training import trainer\n"
      "def main(argv):\n  pass\n"
      'if __name__ == "__main__":\n  main([])\n'
    ),
  }
  for rel, text in {**base, **files}.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
  return tmp_path


@pytest.mark.parametrize(
  "files, expected",
  [
    ({}, None),  # The fake tree itself is clean.
    (  # A circle dodged by an import inside a function (today's latent <-> trainer).
      {
        "sora_jax/core/configs.py": "def f():\n  from sora_jax.core import flops\n",
        "sora_jax/core/flops.py": "from sora_jax.core import configs\n",
      },
      ["inside a function", "import circle: sora_jax.core.configs -> sora_jax.core.flops"],
    ),
    (  # A circle at the top level.
      {
        "sora_jax/core/a.py": "from sora_jax.core import b\n",
        "sora_jax/core/b.py": "from sora_jax.core import a\n",
      },
      ["import circle: sora_jax.core.a -> sora_jax.core.b -> sora_jax.core.a"],
    ),
    (  # An import up the table: models reaching into training.
      {"sora_jax/models/dit.py": "from sora_jax.training import trainer\n"},
      ["models may import only"],
    ),
    (  # A back-arrow from data to the model.
      {"data_pipelines/cache.py": "from sora_jax.core import configs\n"},
      ["data_pipelines may import only itself"],
    ),
    (  # A command used as a library.
      {"sora_jax/evaluate.py": "from sora_jax import train\ndef main(argv):\n  pass\n"},
      ["a command (move the shared part"],
    ),
    (  # A command's flags imported.
      {"sora_jax/core/configs.py": "from sora_jax.train import FLAGS\n"},
      ["command-line part", "core may import only"],
    ),
    (  # Analysis code that imports jax at import time.
      {"sora_jax/analysis/fit.py": "import jax\n"},
      ["analysis code imports jax at import time"],
    ),
    (  # A library module outside every folder of the map.
      {"sora_jax/misc/__init__.py": "", "sora_jax/misc/util.py": "import os\n"},
      [],  # Not importing anything of ours is fine wherever it lives...
    ),
    (
      {"sora_jax/misc/__init__.py": "", "sora_jax/misc/util.py": "from sora_jax.core import a\n"},
      ["in no folder of the map"],  # ...but it must sit in a folder of the map to import ours.
    ),
  ],
)
def test_each_broken_rule_is_caught(tmp_path, files, expected):
  if files.get("sora_jax/misc/util.py", "").endswith("import a\n"):
    files["sora_jax/core/a.py"] = ""
  problems = violations(_tree(tmp_path, files))
  if not expected:
    assert problems == []
  else:
    for want in expected:
      assert any(want in p for p in problems), (want, problems)
