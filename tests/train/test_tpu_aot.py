"""AOT compilation for TPU topologies on a CPU host (libtpu, no TPU), and mesh layout."""
import re
import subprocess
import sys
import textwrap

import jax
import pytest

from showo2_jax import sharding
from showo2_jax.train import aot

from tests.train import runs


@pytest.mark.parametrize("name, grid", [
    ("v5p-8", "v5p:2x2x1"), ("v5p-16", "v5p:2x2x2"), ("v5p-32", "v5p:2x2x4"),
    ("v5p-64", "v5p:2x4x4"), ("v5p-128", "v5p:4x4x4"), ("v5p-256", "v5p:4x4x8"),
    ("v5p-1024", "v5p:8x8x8"), ("v4-8", "v4:2x2x1"), ("v5e-8", "v5e:2x4"),
    ("v5litepod-16", "v5e:4x4"), ("v5e-256", "v5e:16x16"), ("v6e-256", "v6e:16x16"),
    ("v6e-128", "v6e:8x16"), ("v5p:4x4x6", "v5p:4x4x6")])
def test_slice_names_count_cores_on_v4_v5p_and_chips_on_v5e_v6e(name, grid):
  assert aot.tpu_topology_name(name) == grid


@pytest.mark.parametrize("name", ["v5p-12", "v5p-7", "v7x-8", "v5p", "v5p:4y4", "tpu-8"])
def test_bad_topology_names_say_what_is_expected(name):
  with pytest.raises(ValueError, match="TPU topology"):
    aot.tpu_topology_name(name)


def test_mesh_sizes_across_slices_must_match_the_slices():
  devices = jax.devices()[:1]
  with pytest.raises(ValueError, match="dcn"):
    sharding.create_mesh({"data": -1, "dcn_fsdp": 2}, devices)
  with pytest.raises(ValueError, match="8 are available|devices"):
    sharding.create_mesh({"data": 8}, devices)
  mesh = sharding.create_mesh({"data": -1}, devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


SCRIPT = textwrap.dedent("""
    import contextlib, io, sys
    from showo2_jax.cli import main as cli_main
    from showo2_jax import sharding
    from showo2_jax.train import aot
    # The TPU topology's devices lay out on the torus (no fallback) and over slices.
    devs = aot.tpu_devices("v5p:2x2x1", 2)
    mesh = sharding.create_mesh({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 2}, devs)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}, mesh.shape
    slices = [[d.slice_index for d in row.ravel()] for row in mesh.devices]
    assert slices == [[0] * 4, [1] * 4], slices        # data over DCN, fsdp inside a slice
    for argv in (["--topology", "tpu:v5p-8", "--config.mesh.data=1", "--config.mesh.fsdp=2",
                  "--config.mesh.tensor=2", "--config.model.attention_impl=splash"],
                 ["--topology", "tpu:v5p:2x2x1", "--slices", "2", "--config.mesh.data=1",
                  "--config.mesh.fsdp=-1", "--config.mesh.dcn_data=2"]):
      out = io.StringIO()
      with contextlib.redirect_stdout(out):
        rc = cli_main.main(["compile", "--config", "tiny_train"] + argv)
      print(out.getvalue())
      assert rc == 0, argv
    rc = cli_main.main(["compile", "--config", "tiny_train", "--topology", "tpu:v5p-12"])
    assert rc == 1
    print("OK")
""")


@pytest.mark.slow
def test_tiny_train_step_compiles_for_a_tpu_slice_and_two_slices():
  """The whole step (state layout, batch shardings, step) built for abstract TPU
  devices and compiled by the TPU compiler, one slice and two over DCN."""
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=runs.env(1), cwd=runs.REPO,
                        capture_output=True, text=True, timeout=900)
  out = proc.stdout
  assert proc.returncode == 0 and "OK" in out, out[-3000:] + proc.stderr[-3000:]
  assert "devices: 4 (TPU v5), mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in out
  assert "devices: 8 (TPU v5), mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in out
  assert out.count("per device peak (XLA peak_memory_in_bytes)") == 2
  # splash: the Mosaic kernels are in the step (rows over fsdp, heads over tensor)
  kernels = [int(l.split("(")[1].split()[0]) for l in out.splitlines() if l.startswith("attention: ")]
  assert out.count("attention: splash") == 1 and out.count("attention: dense") == 1, out
  assert kernels[0] > 0 and kernels[1] == 0, kernels
  assert "of 95.00 GiB HBM" in out
  assert "not a standard v5p slice size" in proc.stderr
  # FSDP: params are all-gathered per use in the compiled step (not replicated).
  coll = [l for l in out.splitlines() if l.startswith("collectives in the compiled step:")]
  assert len(coll) == 2 and all("all-gather" in l for l in coll), coll
  # FLOPs: the compiled HLO's dots and convolutions are the jaxpr's matmuls within
  # 1% (dense: nothing opaque; XLA simplifies a few tiny dots: 82.84 vs 82.99 MFLOP).
  flop_lines = [l for l in out.splitlines() if l.startswith("FLOPs per step per device")]
  jaxpr = [re.search(r"the step's matmuls (\S+) (\S+)", l).groups() for l in flop_lines]
  hlo = [re.search(r"compiled HLO (\S+) (\S+)", l).groups() for l in flop_lines]
  assert len(flop_lines) == 2 and hlo[1][1] == jaxpr[1][1], flop_lines
  assert abs(float(hlo[1][0]) / float(jaxpr[1][0]) - 1) < 0.01, (hlo, jaxpr)


def _report(platform: str, device_kind: str = "") -> aot.CompileReport:
  mib = 2 ** 20
  return aot.CompileReport(
      devices=8, mesh={"fsdp": 8}, platform=platform, device_kind=device_kind, params=1,
      trainable=1, argument_bytes=4 * mib, output_bytes=4 * mib, temp_bytes=18 * mib,
      alias_bytes=4 * mib, code_bytes=0, xla_peak_bytes=2 * mib, flops=1.0, model_flops=1.0,
      program_flops=1.0, tokens_per_device=1.0, compile_seconds=1.0)


def test_the_peak_is_xlas_on_tpu_and_the_upper_bound_on_cpu():
  """The CPU backend reports a peak_memory_in_bytes below its own temporaries (jax
  0.10); only TPU/GPU peaks are used, elsewhere the labelled upper bound."""
  cpu = _report("cpu")
  assert cpu.peak_bytes == cpu.sum_bytes == 22 * 2 ** 20
  peak = next(l for l in cpu.lines() if l.startswith("per device peak"))
  assert "upper bound: args + outputs + temps - aliased" in peak and "22" in peak, peak
  tpu = _report("tpu", "TPU v5")
  assert tpu.peak_bytes == 2 * 2 ** 20
  assert any(l.startswith("per device peak (XLA peak_memory_in_bytes)") for l in tpu.lines())


def test_collectives_are_counted_from_hlo_text():
  text = ("%a = f32[8] all-gather(%x)\n%b = f32[4] all-gather-start(%y)\n"
          "%c = f32[4] all-gather-done(%b)\n%d = f32[2] reduce-scatter(%z)\n")
  assert aot.count_collectives(text) == {"all-gather": 2, "reduce-scatter": 1}


def test_matmul_flops_count_scan_bodies_per_iteration_and_the_costliest_branch():
  from showo2_jax.train import flops
  w = jax.numpy.ones((8, 16))
  def f(x):                                   # x (4, 8): 5 scanned matmuls + a cond
    y, _ = jax.lax.scan(lambda c, _: (c @ w @ w.T, None), x, None, length=5)
    return jax.lax.cond(y.sum() > 0, lambda y: y @ w, lambda y: y[:, :1] * 2.0 @ jax.numpy.ones((1, 16)), y)
  one = 2 * 4 * 8 * 16
  assert flops.jaxpr_matmul_flops(jax.make_jaxpr(f)(jax.numpy.ones((4, 8)))) == 5 * 2 * one + one
  grad = jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(jax.numpy.ones((4, 8)))
  assert flops.jaxpr_matmul_flops(grad) == 2 * (5 * 2 * one + one)    # forward + d/dx (w is a constant)


@pytest.mark.slow
def test_matmul_flops_of_the_1p5b_step_agree_with_the_model_formula():
  """stage2_1p5b:b traced (abstract, nothing compiled) without remat: the jaxpr's
  matmuls and train/flops.py agree within 10%; full remat adds the recompute."""
  from showo2_jax import config_lib
  from showo2_jax.train import data as data_lib, flops, tasks
  ratios = {}
  for remat in ("none", "full"):
    c = config_lib.load_config("stage2_1p5b:b")
    c.train.global_batch_size, c.model.remat_policy = 2, remat
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    traced, _ = aot.trace_train_step(c, jax.devices()[:1])
    model = flops.train_flops_per_step(tasks.build(c).model_config, int(c.max_seq_len),
                                       data_lib.slots_per_row(c), 2)
    ratios[remat] = flops.jaxpr_matmul_flops(traced.jaxpr) / model
  assert 0.9 < ratios["none"] < 1.1, ratios
  assert ratios["full"] > ratios["none"] + 0.15, ratios


def test_compiled_hlo_flops_count_loop_bodies_per_trip_as_the_jaxpr_does():
  """`flops.hlo_matmul_flops` on XLA:CPU's compiled HLO of a scanned matmul stack and
  its gradient equals the jaxpr's count (XLA's own cost analysis counts the body once)."""
  from showo2_jax.train import flops
  w = jax.numpy.ones((8, 16))
  def f(x):
    y, _ = jax.lax.scan(lambda c, _: (jax.numpy.tanh(c @ w) @ w.T, None), x, None, length=5)
    return (y ** 2).sum()
  x = jax.numpy.ones((4, 8))
  for fn in (f, jax.grad(f)):
    text = jax.jit(fn).lower(x).compile().as_text()
    counted = flops.hlo_matmul_flops(text)
    assert counted["unknown_trips"] == 0 and counted["loops"], counted
    assert counted["flops"] == flops.jaxpr_matmul_flops(jax.make_jaxpr(fn)(x)), counted


def test_compiled_hlo_flops_of_a_tpu_style_convolution_skip_dilation_holes():
  """TPU HLO writes batched dots as convolutions whose spatial dims carry batch-like
  dims through lhs dilation: only (output, window) pairs landing on an input count,
  as XLA's HloCostAnalysis counts them. Here: attention scores of 2 rows x 2 heads,
  64 queries x 64 keys x 16 dims = 2*2*64*64*16 multiply-adds, in a 3-trip loop."""
  from showo2_jax.train import flops
  text = textwrap.dedent("""\
      %cond (p: (s32[], f32[2,64,2,16,1])) -> pred[] {
        %p = (s32[], f32[2,64,2,16,1]) parameter(0)
        %i = s32[] get-tuple-element(%p), index=0
        %n = s32[] constant(3)
        ROOT %lt = pred[] compare(%i, %n), direction=LT
      }
      %body (q: (s32[], f32[2,64,2,16,1])) -> (s32[], f32[2,64,2,16,1]) {
        %q = (s32[], f32[2,64,2,16,1]) parameter(0)
        %lhs = f32[2,64,2,16,1]{4,3,2,1,0} get-tuple-element(%q), index=1
        %rhs = bf16[2,64,2,1,16]{4,3,2,1,0:T(8,128)(2,1)} parameter(1)
        %conv = f32[2,2,64,64,1]{4,3,2,1,0} convolution(%lhs, %rhs), window={size=2x2x1 lhs_dilate=2x2x1}, dim_labels=0b1f2_0o12i->01bf2
        ROOT %t = (s32[], f32[2,64,2,16,1]) tuple(%i2, %lhs)
      }
      ENTRY %main (x: (s32[], f32[2,64,2,16,1])) -> (s32[], f32[2,64,2,16,1]) {
        %x = (s32[], f32[2,64,2,16,1]) parameter(0)
        ROOT %w = (s32[], f32[2,64,2,16,1]) while(%x), condition=%cond, body=%body
      }
      """)
  counted = flops.hlo_matmul_flops(text)
  assert counted["loops"] == [("body", 3)], counted
  assert counted["flops"] == 3 * 2 * (2 * 2 * 64 * 64 * 16), counted


def test_while_loops_are_counted_from_hlo_text():
  text = ("%w = (s32[], f32[8]) while(%t), condition=%c, body=%b\n"
          "%x = f32[8] add(%a, %b)\nwhile.1 = (s32[]) while(%u), condition=%c2, body=%b2\n")
  assert aot.count_while_loops(text) == 2


@pytest.mark.slow  # two compiles of the tiny train step (2 and 6 layers)
def test_scanned_layer_stacks_stay_loops_so_compile_work_does_not_grow_with_depth():
  """With `scan_layers` (the pod configs) the LLM, SigLIP and flow-head stacks are
  while loops in the compiled step, forward and backward, and the compiled program
  is the same size at 2 and 6 layers: compile time does not scale with depth."""
  from showo2_jax import config_lib
  sizes, loops = {}, {}
  for layers in (2, 6):
    c = config_lib.load_config("tiny_train")
    c.model.scan_layers, c.model.remat_policy = True, "full"
    c.model.llm.num_layers = c.model.siglip.num_layers = c.model.flow_head.num_layers = layers
    c.mesh.data, c.train.global_batch_size = 1, 2
    lowered, lay = aot.lower_train_step(c, jax.devices()[:1])
    with jax.set_mesh(lay.mesh), sharding.axis_rules():
      text = lowered.compile().as_text()
    loops[layers] = aot.count_while_loops(text)
    sizes[layers] = len([l for l in text.splitlines() if " = " in l])
  assert loops[2] == loops[6] >= 6, loops       # 3 stacks x (forward, backward) at least
  assert abs(sizes[6] - sizes[2]) <= 0.02 * sizes[2], sizes


@pytest.mark.slow
def test_a_step_that_does_not_fit_hbm_is_one_line_naming_the_remedies():
  """The TPU compiler's RESOURCE_EXHAUSTED (tiny_train at 65536 rows per v5e chip:
  ~98 GiB of temporaries against 15.75) is one line, not a traceback."""
  out = subprocess.run([sys.executable, "-m", "showo2_jax.cli.main", "compile", "--config", "tiny_train",
                        "--topology", "tpu:v5e-4", "--config.train.global_batch_size=262144"],
                       capture_output=True, text=True, cwd=runs.REPO, env=runs.env(1), timeout=600)
  assert out.returncode == 1, out.stderr[-3000:]
  err = [l for l in out.stderr.splitlines() if l.startswith("showo2-jax compile: error:")]
  assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "does not fit tpu:v5e-4" in err[0] and "exceeds available HBM" in err[0]
  assert "--config.model.remat_policy=full" in err[0]
