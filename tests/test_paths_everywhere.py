"""User paths go through showo2_jax.paths (local folders and gs:// alike).

An AST scan of the package for the calls that only work on local files:
`os.makedirs`, `os.path.exists/isdir/isfile/getsize`, `os.listdir`, `os.replace/
rename/remove/unlink`, `shutil.*`, `glob.glob` and the builtin `open(`. Each one left
is listed below with its reason (a file that is local by nature: a package file,
a temporary file, a device node); a new one fails this test, so a user path cannot
slip back to `os.path`.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "showo2_jax"

LOCAL_CALLS = {"os.makedirs", "os.path.exists", "os.path.isdir", "os.path.isfile",
               "os.path.getsize", "os.listdir", "os.replace", "os.rename", "os.remove",
               "os.unlink", "glob.glob", "open"}
LOCAL_MODULES = ("shutil.",)

# (file relative to the package, function) -> why it is local by nature.
_MMAP = ("PyTorch-side weights are memory-mapped (safetensors) or torch.load-ed: local files "
         "only; the commands that take them copy a gs:// source first (paths.local_copy)")
_STAGED = "writes into the local folder paths.local_output gives to_torch (uploaded when complete)"
_PARITY = "golden fixtures written by the PyTorch bench (tests/reference) on this machine"
_SHAPES = "the tiny_shapes toy recipe; shapes.recipe.run refuses a gs:// workdir in one line"
ALLOWED = {
    ("paths.py", "*"): "the helper itself: the local branch of every operation",
    ("convert/checkpoint_io.py", "SafetensorsFile.__init__"): _MMAP,
    ("convert/checkpoint_io.py", "save_safetensors"): _MMAP + "; to_torch writes it into " + _STAGED,
    ("convert/checkpoint_io.py", "StateDict._open"): _MMAP,
    ("convert/checkpoint_io.py", "_resolve"): _MMAP,
    ("convert/orbax_io.py", "ParamWriter.close"): "removes its own local staging folder (tempfile)",
    ("convert/orbax_io.py", "ParamWriter.__exit__"): "removes its own local staging folder (tempfile)",
    ("convert/pipeline.py", "_write_shards"): _STAGED,
    ("convert/pipeline.py", "_torch_save_streamed"): _STAGED + "; its raw file is memory-mapped",
    ("convert/pipeline.py", "_torch_save"): _STAGED,
    ("convert/pipeline.py", "_write_configs"): _STAGED,
    ("data/record_io.py", "write_array_record"): "renames within the local path paths.local_output "
                                                 "gives (ArrayRecord writes local files only)",
    ("data/testing.py", "*"): "writes test fixtures into a local (pytest tmp_path) folder",
    ("cli/main.py", "skip_absent_tpu"): "probes device nodes (/dev/nvidia*), not a user path",
    ("cli/serve.py", "build_server"): "--allowed-local-media-path: folders of this server's "
                                      "machine, checked with realpath",
    ("serve/api.py", "load_image_url"): "file:// images under --allowed-local-media-path of this "
                                        "server's machine (realpath-checked)",
    ("cli/check_parity.py", "*"): _PARITY,
    ("parity/bf16.py", "*"): _PARITY,
    ("parity/sampling.py", "*"): _PARITY,
    ("parity/showo2.py", "*"): _PARITY,
    ("shapes/recipe.py", "*"): _SHAPES,
    ("shapes/report.py", "*"): _SHAPES,
    ("shapes/tokenizer.py", "*"): _SHAPES,
    ("shapes/world.py", "*"): _SHAPES,
}


def _name(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    inner = _name(node.value)
    return f"{inner}.{node.attr}" if inner else ""
  return ""


def _local_calls(path: Path):
  tree = ast.parse(path.read_text(), str(path))
  found = []

  def visit(node, func):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        visit(child, f"{func}.{child.name}" if func else child.name)
        continue
      if isinstance(child, ast.Call):
        name = _name(child.func)
        if name in LOCAL_CALLS or name.startswith(LOCAL_MODULES):
          found.append((func or "<module>", name, child.lineno))
      visit(child, func)

  visit(tree, "")
  return found


def test_no_local_only_file_calls_on_user_paths():
  stray = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = str(path.relative_to(PACKAGE))
    for func, call, line in _local_calls(path):
      if (rel, "*") in ALLOWED or (rel, func) in ALLOWED:
        continue
      stray.append(f"showo2_jax/{rel}:{line} {func}: {call}(")
  assert not stray, ("local-only file calls (use showo2_jax.paths, or add a reason to "
                     "ALLOWED):\n" + "\n".join(stray))


def test_allow_list_has_no_stale_entries():
  used = set()
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = str(path.relative_to(PACKAGE))
    for func, _, _ in _local_calls(path):
      used.update({(rel, func), (rel, "*")})
  assert not set(ALLOWED) - used, sorted(set(ALLOWED) - used)
