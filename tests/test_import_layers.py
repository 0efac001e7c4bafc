"""Imports run one way: each package of showo2_jax imports only from the layers below it.

The layers, bottom to top (docs/architecture.md says what each owns):

  0 shared       paths, config_lib, sharding, param_mapping, testing (and __init__)
  1 core         models/, vae/, flow/, data/        (never each other)
  2 checkpoints  convert/                           (all checkpoint I/O)
  3 programs     train/, sample/                    (never each other)
  4 services     serve/, parity/, shapes/           (never each other)
  5 cli          cli/

Imports are read from the source with `ast` (top-level, inside functions, under
`try`, all alike); nothing is imported or run. A module may import its own package
and any layer below. `ALLOWED` lists the upward or sideways imports that still
exist, each as (importing module, imported module); it only shrinks: a new edge
fails the first test, an entry that no longer occurs fails the second.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "showo2_jax"

LAYERS = (
    ("paths", "config_lib", "sharding", "param_mapping", "testing", "__init__"),
    ("models", "vae", "flow", "data"),
    ("convert",),
    ("train", "sample"),
    ("serve", "parity", "shapes"),
    ("cli",),
)
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}

# Today's violations, to be removed one by one (never added to).
ALLOWED: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  if parts[-1] == "__init__" and len(parts) > 1:
    parts = parts[:-1]
  return ".".join(parts)


def _imported(source: str, module: str, is_package: bool = False,
              modules: frozenset[str] = frozenset()) -> set[str]:
  """The showo2_jax modules that `source` (module `module`, relative to showo2_jax)
  imports, every form and place: `from a import b` is module a.b if that is one of
  `modules`, else a."""
  package = ["showo2_jax", *module.split(".")]
  if not is_package:
    package = package[:-1]
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}"[len("showo2_jax."):] in modules
               else base for a in node.names]
    else:
      continue
    out.update(n[len("showo2_jax."):] for n in names if n.startswith("showo2_jax."))
  return out


def _edges() -> set[tuple[str, str]]:
  """(importing module, imported module) over the whole package."""
  files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
  return {(mod, target) for mod, path in files.items()
          for target in _imported(path.read_text(), mod, path.name == "__init__.py",
                                  frozenset(files))}


def _bad(mod: str, target: str) -> bool:
  a, b = mod.split(".")[0], target.split(".")[0]
  if a == b or a not in LEVEL or b not in LEVEL:
    return False   # an unplaced package: test_every_package_has_a_layer names it
  return LEVEL[b] >= LEVEL[a]


def test_every_package_has_a_layer():
  top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
         if (p.suffix == ".py") or (p / "__init__.py").exists()}
  assert top <= set(LEVEL), f"place {sorted(top - set(LEVEL))} in LAYERS (and docs/architecture.md)"


def test_no_new_upward_import():
  new = sorted(f"showo2_jax.{m} imports showo2_jax.{t}" for m, t in _edges()
               if _bad(m, t) and (m, t) not in ALLOWED)
  assert not new, ("imports must run down the layers (see this file's docstring and "
                   "docs/architecture.md); move the shared code down instead:\n  " + "\n  ".join(new))


def test_allow_list_only_holds_imports_that_still_exist():
  edges = _edges()
  gone = sorted(f"{m} -> {t}" for m, t in ALLOWED if (m, t) not in edges or not _bad(m, t))
  assert not gone, f"remove these fixed entries from ALLOWED: {gone}"


def test_the_parser_sees_every_import_form():
  """Lazy imports inside functions and under `try`, `from pkg import module`, relative
  imports: all count (the usual ways an upward import hides)."""
  source = (
      "import showo2_jax.models.qwen2\n"
      "def f():\n"
      "  try:\n"
      "    from showo2_jax.train import checkpointing\n"
      "  except ImportError:\n"
      "    pass\n"
      "from ..cli.main import main\n"
      "from . import tokens\n")
  known = frozenset({"models.qwen2", "train", "train.checkpointing", "cli.main", "sample.tokens"})
  got = _imported(source, "sample.loading", modules=known)
  assert got == {"models.qwen2", "train.checkpointing", "cli.main", "sample.tokens"}
  assert _bad("sample.loading", "train.checkpointing") and _bad("models.siglip_vision", "convert.hf")
  assert _bad("serve.engine", "shapes.recipe")  # same layer, other package
  assert not _bad("sample.visual", "models.showo2") and not _bad("cli.main", "serve.api")
  assert not _bad("sample.visual", "sample.pipeline")


def test_one_orbax_layer():
  """All checkpoint I/O goes through convert/orbax_io.py: no other module imports orbax."""
  users = set()
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(n == "orbax" or n.startswith("orbax.") for n in names):
        users.add(_module_name(path))
  assert users == {"convert.orbax_io"}, f"import orbax only in convert/orbax_io.py, not in {sorted(users - {'convert.orbax_io'})}"
