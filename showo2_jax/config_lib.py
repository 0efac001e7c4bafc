"""Finding and loading ml_collections configs by name or path.

`load_config("tiny")` loads `configs/tiny.py`; `load_config("path/to/my.py:arg")`
loads any file and passes `arg` to its `get_config`. Config files may import their
siblings as `from configs import models`.

Where the named configs are: `$SHOWO2_CONFIG_DIR` if set; else the `configs/`
folder of a source checkout (editable install, PYTHONPATH); else the copy a wheel
installs as `showo2_jax/configs` (setup.py packages the folder under that name).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _config_dir() -> Path:
  if os.environ.get("SHOWO2_CONFIG_DIR"):
    return Path(os.environ["SHOWO2_CONFIG_DIR"])
  checkout = REPO_ROOT / "configs"
  if (checkout / "tiny_train.py").exists():
    return checkout
  return PACKAGED_CONFIG_DIR


CONFIG_DIR = _config_dir()


class UnknownConfigError(ValueError):
  pass


def available_configs() -> list[str]:
  """Names of the config files that define `get_config` (helpers like models.py don't)."""
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                if not p.stem.startswith("_") and "def get_config" in p.read_text())


def resolve_config_path(name: str) -> Path:
  path = Path(name)
  if path.suffix == ".py" and path.exists():
    return path.resolve()
  candidate = CONFIG_DIR / f"{name}.py"
  if candidate.exists():
    return candidate
  raise UnknownConfigError(
      f"unknown config '{name}': not a file, and not one of {', '.join(available_configs())} "
      f"(in {CONFIG_DIR})")


def load_config(spec: str):
  """Returns the ConfigDict of `spec` = `name` | `path.py`, optionally `:arg`."""
  name, _, arg = spec.partition(":")
  path = resolve_config_path(name)
  _register_configs_package()
  module_name = f"_showo2_config_{path.stem}"
  spec_ = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UnknownConfigError(f"{path} defines no get_config()")
  return module.get_config(arg or None)


def _register_configs_package() -> None:
  """Makes `import configs` (used by config files for their siblings) import CONFIG_DIR,
  wherever it lies, without putting its parent folder on sys.path."""
  current = sys.modules.get("configs")
  if current is not None and [str(Path(p).resolve()) for p in getattr(current, "__path__", [])] \
      == [str(CONFIG_DIR.resolve())]:
    return
  spec = importlib.util.spec_from_file_location(
      "configs", CONFIG_DIR / "__init__.py", submodule_search_locations=[str(CONFIG_DIR)])
  module = importlib.util.module_from_spec(spec)
  sys.modules["configs"] = module
  spec.loader.exec_module(module)
