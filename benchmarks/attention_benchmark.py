"""Attention forward + backward under the omni mask, per `model.attention_impl`.

    python benchmarks/attention_benchmark.py                    # small config's LLM layer
    python benchmarks/attention_benchmark.py --chunks 128,256,512 --torch --json out.json
    python benchmarks/attention_benchmark.py --also flash --seq 4352   # on a GPU (pip install -e '.[gpu]')

One layer's attention core of the `small` config (B 2, L 1024, 8 query / 2 KV
heads of 64; the omni mask of `../shared/bench/ref_bench.py`: one 730-token image
block per row at 34 and at 2), fp32: the jitted value-and-gradient of
sum(attention(q, k, v) * w) w.r.t. q, k, v. Reports per call both wall seconds and
process CPU seconds (user + system of all threads: on a shared machine the
fairer figure), best of `--reps`. `--torch` adds PyTorch's
`scaled_dot_product_attention` with the same boolean mask (what the original's
SDPA path runs), timed the same way in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from showo2_jax.models import attention, omni_mask  # noqa: E402


def timed(fn, reps):
  """(best wall s, best process-CPU s) over `reps` calls after one warm-up call."""
  fn()
  wall, cpu = [], []
  for _ in range(reps):
    w, c = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
  return min(wall), min(cpu)


def inputs(b, l, hq, hkv, d, blocks):
  rng = np.random.default_rng(0)
  q, k, v, w = (rng.normal(size=(b, l, h, d)).astype(np.float32) for h in (hq, hkv, hkv, hq))
  mask = np.asarray(omni_mask.omni_attention_mask(jnp.asarray(blocks, jnp.int32), l))
  return q, k, v, w, mask


def jax_case(impl, chunk, q, k, v, w, mask, scale):
  def loss(q, k, v, mask, w):
    return jnp.sum(attention.attention(q, k, v, mask, scale, impl=impl, chunk_size=chunk) * w)
  f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  args = [jnp.asarray(x) for x in (q, k, v, mask, w)]
  return lambda: jax.block_until_ready(f(*args))


def torch_case(q, k, v, w, mask, scale, hq, hkv):
  import torch  # pylint: disable=import-outside-toplevel
  tq, tk, tv = (torch.tensor(x).transpose(1, 2).requires_grad_() for x in (q, k, v))
  tw, tm = torch.tensor(w).transpose(1, 2), torch.tensor(mask)[:, None]

  def run():
    for t in (tq, tk, tv):
      t.grad = None
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk.repeat_interleave(hq // hkv, 1),
                                                           tv.repeat_interleave(hq // hkv, 1),
                                                           attn_mask=tm, scale=scale)
    (out * tw).sum().backward()
  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--heads", default="8,2", help="query heads,kv heads")
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--chunks", default="64,128,256", help="chunk sizes of `chunked`")
  p.add_argument("--also", default="", help="more implementations to time, e.g. flash (GPU, tokamax) "
                 "or splash (TPU); off their accelerator they run reference paths")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--torch", action="store_true", help="also time PyTorch SDPA")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  hq, hkv = (int(x) for x in args.heads.split(","))
  l, d = args.seq, args.head_dim
  blocks = [[[min(34, l - 1), min(730, l - 34)]], [[2, min(730, l - 2)]]][:args.batch]
  blocks += [blocks[-1]] * (args.batch - len(blocks))
  q, k, v, w, mask = inputs(args.batch, l, hq, hkv, d, blocks)
  scale = d ** -0.5
  cases = [("dense", None)] + [("chunked", int(c)) for c in args.chunks.split(",") if c]
  cases += [(impl, None) for impl in args.also.split(",") if impl]
  rows = []
  for impl, chunk in cases:
    wall, cpu = timed(jax_case(impl, chunk or 512, q, k, v, w, mask, scale), args.reps)
    name = impl if chunk is None else f"{impl} {chunk}"
    if (impl, jax.default_backend()) in (("flash", "cpu"), ("splash", "cpu")):
      name += " (reference path off its accelerator)"
    rows.append(dict(impl=name, wall_s=wall, cpu_s=cpu))
  if args.torch:
    import torch  # pylint: disable=import-outside-toplevel
    wall, cpu = timed(torch_case(q, k, v, w, mask, scale, hq, hkv), args.reps)
    rows.append(dict(impl=f"torch SDPA ({torch.get_num_threads()} threads)", wall_s=wall, cpu_s=cpu))
  print(f"attention fwd+bwd, B {args.batch}, L {l}, heads {hq}/{hkv} x {d}, fp32, omni mask; "
        f"load (1 min) {os.getloadavg()[0]:.1f}")
  print("| impl | wall s | CPU s | CPU vs dense |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['impl']} | {r['wall_s']:.4f} | {r['cpu_s']:.4f} | {rows[0]['cpu_s'] / r['cpu_s']:.2f}x |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(args=vars(args), rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
