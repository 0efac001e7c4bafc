"""One process of the elastic-resume test (tests/train/test_elastic_resume.py).

    python -m tests.train.elastic_data_run OUT.json --data DATA.yaml --tok DIR \
        --workdir DIR --steps N [--save] [--num_workers W] [--mesh data,fsdp,tensor]
        [--coordinator HOST:PORT --num_processes P --process_id I]

Builds the training iterator the way `train` does (`train.data.make_iterator`,
rows from this process's part of the global batch), restores the newest
checkpoint of `--workdir` (state and data position) if there is one, reads
`--steps` batches and, with `--save`, saves a checkpoint after them. No model:
the TrainState is a small array tree sharded over the mesh, so the test costs no
compilation. OUT.json gets {"restored": step, "rows": [[row id, ...] per step]},
a row id being a hash of the row's tokens and pixels.
"""
import argparse
import hashlib
import json

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from showo2_jax import config_lib, paths, sharding as sharding_lib
from showo2_jax.data import data_file
from showo2_jax.train import checkpointing, data as data_lib
from showo2_jax.train.state import TrainState


def _state(mesh, step: int) -> TrainState:
  """params (8, 4) sharded over data*fsdp rows: they reshard when the mesh changes."""
  shard = NamedSharding(mesh, P(("data", "fsdp")))
  rep = NamedSharding(mesh, P())
  w = np.arange(32, dtype=np.float32).reshape(8, 4)
  mk = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i])
  return TrainState(step=mk(np.asarray(step, np.int32), rep), params={"w": mk(w, shard)},
                    opt_state={}, rng=mk(np.zeros((2,), np.uint32), rep))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("--data", required=True)
  p.add_argument("--tok", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--save", action="store_true")
  p.add_argument("--global_batch", type=int, default=6)
  p.add_argument("--num_workers", type=int, default=0)
  p.add_argument("--mesh", default="-1,1,1")
  p.add_argument("--coordinator")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  a = p.parse_args()
  if a.coordinator:
    jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)

  config = config_lib.load_config("tiny_train")
  config.data = data_file.load(a.data)
  config.data.num_workers = a.num_workers
  config.tokenizer_path = a.tok
  config.max_seq_len = 64   # resolution: tiny_train's, which gives the model's latent grid
  config.train.global_batch_size = a.global_batch
  data, fsdp, tensor = (int(x) for x in a.mesh.split(","))
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  mesh = sharding_lib.create_mesh(config.mesh)

  ckpt = checkpointing.Checkpointer(paths.join(a.workdir, "checkpoints"), every_steps=1, keep=3,
                                    async_save=False, layout=data_lib.layout(config))
  iterator = data_lib.make_iterator(config, mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          _state(mesh, 0))
  state, restored = ckpt.restore_latest(abstract, iterator)
  if state is not None:   # the params resharded onto this mesh
    np.testing.assert_array_equal(np.asarray(jax.device_get(state.params["w"])),
                                  np.arange(32, dtype=np.float32).reshape(8, 4))
  rows = []
  for _ in range(a.steps):
    batch = data_lib.slots_by_row(next(iterator))
    rows.append([hashlib.sha1(batch["text_tokens"][i].tobytes()
                              + batch["pixel_values"][i].tobytes()).hexdigest()[:16]
                 + ("u" if batch["is_und"][i] else "g") for i in range(len(batch["text_tokens"]))])
  if a.save:
    step = int(restored or 0) + a.steps
    ckpt.save(step, _state(mesh, step), iterator, force=True)
  ckpt.close()
  if hasattr(iterator, "close"):
    iterator.close()
  paths.write_text(a.out, json.dumps({"restored": restored, "rows": rows,
                                      "state": iterator.get_state() if hasattr(iterator, "positions")
                                      else None}))


if __name__ == "__main__":
  main()
