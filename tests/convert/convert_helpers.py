"""Helpers for the conversion tests: reading and comparing checkpoints."""
import os
import shutil

import numpy as np

from showo2_jax.convert import checkpoint_io


def read_all(path):
  """{key: (dtype name, shape, bytes)} of a checkpoint (file or directory)."""
  with checkpoint_io.StateDict(str(path)) as sd:
    return {k: (sd[k].dtype.name, sd[k].shape, np.ascontiguousarray(sd[k]).tobytes()) for k in sd.keys()}


def assert_same_tensors(a, b):
  """Same keys, dtypes, shapes and bytes: a bit-exact round trip."""
  ta, tb = read_all(a), read_all(b)
  assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))
  bad = [k for k in ta if ta[k] != tb[k]]
  assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:5]}"


def copy_fixture(src, dst, drop=(), transform=None, name="model.safetensors"):
  """A copy of a fixture directory with some keys dropped / tensors changed."""
  os.makedirs(dst, exist_ok=True)
  for f in os.listdir(src):
    if f.endswith(".json"):
      shutil.copy(os.path.join(src, f), dst)
  with checkpoint_io.StateDict(str(src)) as sd:
    tensors = {k: np.array(sd[k]) for k in sd.keys() if k not in drop}
  if transform:
    tensors = transform(tensors)
  checkpoint_io.save_safetensors(tensors, os.path.join(dst, name), metadata={"format": "pt"})
  return dst
