"""Per-chip memory of one attention layer (forward + backward), dense vs chunked vs
splash, compiled by the TPU compiler on a CPU host (libtpu, no TPU).

One layer of the LLM or of the flow head of a config, at its sequence length and
`--rows` rows per chip, under the omni mask of `--images` visual blocks of
`--block-len` tokens spread over the row: the loss sum(attention(q, k, v) * w)
and its gradients with respect to q, k, v are compiled for one chip of
`--topology` and XLA's temporaries and peak are printed. This isolates what the
attention implementation costs, which the whole-step table (pod_compile.py)
mixes with everything else; it compiles in seconds.

  python benchmarks/attention_compile.py --config mixed_modality_1p5b --topology v5p-8 --json att.json
"""
from __future__ import annotations

import argparse
import json
import os

IMPLS = ("dense", "chunked", "splash")


def layer_shapes(config, which: str):
  m = config.model.llm if which == "llm" else config.model.flow_head
  return int(m.num_heads), int(m.num_kv_heads), int(m.head_dim)


def modality_positions(rows: int, seq_len: int, images: int, block_len: int):
  """`images` blocks of `block_len` tokens, evenly spread after some text."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  gap = (seq_len - images * block_len) // (images + 1)
  if gap < 0:
    raise SystemExit(f"{images} blocks of {block_len} tokens do not fit in {seq_len}")
  offs = [gap + i * (block_len + gap) for i in range(images)]
  mp = np.asarray([[o, block_len] for o in offs], np.int32)
  return np.broadcast_to(mp, (rows, images, 2)).copy()


def compile_one(impl, device, rows, seq_len, heads, kv_heads, head_dim, mp, chunk):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from showo2_jax.models import attention, omni_mask  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray([device]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  rep = NamedSharding(mesh, P())
  sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=rep)  # noqa: E731
  q = sd((rows, seq_len, heads, head_dim), jnp.bfloat16)
  kv = sd((rows, seq_len, kv_heads, head_dim), jnp.bfloat16)

  def loss(q, k, v, w, mp):
    mask = omni_mask.omni_attention_mask(mp, seq_len)
    out = attention.attention(q, k, v, mask, head_dim ** -0.5, impl=impl, chunk_size=chunk)
    return jnp.sum(out.astype(jnp.float32) * w)

  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  with jax.set_mesh(mesh):
    compiled = fn.lower(q, kv, kv, sd(q.shape, jnp.float32), sd(mp.shape, jnp.int32)).compile()
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  return dict(impl=impl, temp_gib=mem.temp_size_in_bytes / 2 ** 30,
              peak_gib=(getattr(mem, "peak_memory_in_bytes", 0) or 0) / 2 ** 30,
              argument_gib=mem.argument_size_in_bytes / 2 ** 30,
              pallas_kernels=text.count('custom_call_target="tpu_custom_call"'))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="mixed_modality_1p5b")
  p.add_argument("--topology", default="v5p-8", help="TPU slice whose chip is compiled for")
  p.add_argument("--layers", nargs="+", default=["llm", "flow_head"], choices=["llm", "flow_head"])
  p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
  p.add_argument("--rows", type=int, default=2, help="rows per chip")
  p.add_argument("--seq-len", type=int, default=None, help="default: the config's max_seq_len")
  p.add_argument("--images", type=int, default=4)
  p.add_argument("--block-len", type=int, default=730, help="tokens per visual block (time token included)")
  p.add_argument("--chunk", type=int, default=512, help="attention_chunk_size (chunked rows / splash block)")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from showo2_jax import config_lib  # pylint: disable=import-outside-toplevel
  from showo2_jax.cli.train import quiet_libraries  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import aot  # pylint: disable=import-outside-toplevel
  quiet_libraries()
  config = config_lib.load_config(args.config)
  seq_len = args.seq_len or int(config.max_seq_len)
  device = aot.tpu_devices(args.topology)[0]
  mp = modality_positions(args.rows, seq_len, args.images, args.block_len)
  rows = []
  for which in args.layers:
    h, hkv, d = layer_shapes(config, which)
    for impl in args.impls:
      r = compile_one(impl, device, args.rows, seq_len, h, hkv, d, mp, args.chunk)
      r.update(config=args.config, layer=which, device_kind=device.device_kind, rows=args.rows,
               seq_len=seq_len, heads=h, kv_heads=hkv, head_dim=d)
      rows.append(r)
      print(json.dumps(r), flush=True)
  print(f"\n{args.config}: one attention layer, forward + backward, {args.rows} rows x {seq_len} tokens "
        f"per chip ({device.device_kind}), {args.images} visual blocks of {args.block_len}\n")
  print("| layer | heads (kv) x dim | attention | temps GiB | XLA peak GiB | Pallas kernels |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['layer']} | {r['heads']} ({r['kv_heads']}) x {r['head_dim']} | {r['impl']} | "
          f"{r['temp_gib']:.3f} | {r['peak_gib']:.3f} | {r['pallas_kernels']} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
