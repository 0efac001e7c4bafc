"""The accelerator suite and the side-by-side comparison run end to end on a tiny config.

Nothing here is timed: the tests check that the commands run, write what they
promise and compute their ratios from what they measured.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--config", "tiny", "--new-tokens", "4"]


def _run(cmd, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


@pytest.mark.slow
def test_accelerator_suite_writes_every_figure(tmp_path):
  out = tmp_path / "suite.json"
  _run(["bash", str(REPO / "benchmarks" / "accelerator_suite.sh"), "--out", str(out), *TINY,
        "--train-config", "tiny_train", "--t2i-points", "3", "--train-steps", "1",
        "--batches", "1,2", "--train-batch", "2", "--peak-tflops", "1.0"], tmp_path)
  res = json.loads(out.read_text())
  assert [r["batch"] for r in res["t2i"]] == [1, 2]
  assert [r["batch"] for r in res["decode"]] == [1, 2]
  for r in res["t2i"]:
    assert r["s_per_image"] > 0 and r["evals"] == 2
  for r in res["decode"]:
    # tokens/s is None only when 3 decode steps vanish in timing noise (tiny model)
    assert r["prefill_s"] > 0 and r["total_s"] > 0
    assert r["tok_per_s"] is None or r["tok_per_s"] > 0
  train = res["train"]
  assert train["step_s"] > 0 and train["global_batch"] == 2
  assert abs(train["mfu"] - train["model_tflops"] / 1.0) < 1e-12       # the given peak
  assert res["peak"]["measured_gemm_tflops"] > 0
  assert res["machine"]["platform"] == "cpu"


FAKE_REFERENCE = """
import json, time
time.sleep(0.01)
print("some log line")
print(json.dumps({"params": 1, "threads": 2, "t2i_s_per_cfg_call": 0.5,
                  "t2i_s_per_image_50_steps_est": 24.5, "mmu_tokens": 8, "mmu_tok_per_s": 2.0,
                  "train_s_per_step_b2_L1024": 7.0}))
"""


def _compare_original(tmp_path, reference_script: str, out, *flags) -> str:
  """compare_original.py's T2I task against `reference_script` standing in for the
  original's ref_bench.py (in an empty stand-in code dir); its stdout."""
  ref = tmp_path / "ref_bench.py"
  ref.write_text(reference_script)
  code = tmp_path / "show-o2"
  code.mkdir()
  return _run([sys.executable, str(REPO / "benchmarks" / "compare_original.py"), *TINY,
               "--tasks", "t2i", *flags, "--reference-python", sys.executable,
               "--reference-code", str(code), "--reference-bench", str(ref), "--json", str(out)],
              tmp_path)


@pytest.mark.slow
def test_compare_original_alternates_and_reports_ratios(tmp_path):
  """A stand-in for the original's ref_bench.py (fixed figures) checks the plumbing:
  rounds alternate, medians and ratios come from the measured figures."""
  out = tmp_path / "compare.json"
  stdout = _compare_original(tmp_path, FAKE_REFERENCE, out, "--t2i-points", "3", "--rounds", "2")
  res = json.loads(out.read_text())
  assert len(res["ours_rounds"]) == 2 and len(res["original_rounds"]) == 2
  (row,) = res["table"]
  ours = sorted(r["t2i_s_per_image"] for r in res["ours_rounds"])
  assert abs(row["ours"] - (ours[0] + ours[1]) / 2) < 1e-9
  assert row["original"] == 0.5 * 2                  # per CFG call x (3 - 1) evaluations
  assert abs(row["speedup"] - 1.0 / row["ours"]) < 1e-9
  assert row["ours_peak_gib"] > 0.1
  assert all(r["peak_rss_gib"] > 0 for r in res["original_rounds"])
  assert "T2I (tiny config), 3-point Euler + CFG" in stdout and "x faster" in stdout
  assert set(res["gemm_peak_tflops"]) == {"jax", "torch"}


CLOCK_REFERENCE = """
import json, time
cpu = time.perf_counter is time.process_time
print(json.dumps({"t2i_s_per_cfg_call": 2.0 if cpu else 1.0, "t2i_s_per_image_50_steps_est": 98.0,
                  "mmu_tok_per_s": 1.0, "train_s_per_step_b2_L1024": 7.0}))
"""


@pytest.mark.slow
def test_compare_original_clock_cpu_reads_process_time_in_both_programs(tmp_path):
  """Also: ref_bench.py always runs the small config, so ours on tiny is NOT COMPARABLE."""
  out = tmp_path / "compare.json"
  stdout = _compare_original(tmp_path, CLOCK_REFERENCE, out, "--t2i-points", "2", "--rounds", "1",
                             "--clock", "cpu")
  res = json.loads(out.read_text())
  assert res["comparable"] is False and "NOT COMPARABLE" in stdout
  (row,) = res["table"]
  assert row["original"] == 2.0 * 1                   # the stand-in saw process_time
  assert row["ours"] > 0 and "cpu seconds" in stdout


def test_attention_benchmark_runs_on_a_tiny_shape(tmp_path):
  out = tmp_path / "attn.json"
  _run([sys.executable, str(REPO / "benchmarks" / "attention_benchmark.py"), "--batch", "1", "--seq", "40",
        "--heads", "2,1", "--head-dim", "8", "--chunks", "16", "--reps", "1", "--json", str(out)], tmp_path)
  rows = json.loads(out.read_text())["rows"]
  assert [r["impl"] for r in rows] == ["dense", "chunked 16"]
  assert all(r["wall_s"] > 0 and r["cpu_s"] >= 0 for r in rows)


@pytest.mark.slow
def test_serve_benchmark_reports_latency_and_throughput(tmp_path):
  """benchmarks/serve_benchmark.py on the tiny config: a server on 127.0.0.1, mixed
  requests over HTTP (chats with 0-2 images, a stream, an image), no error, the
  table on stdout and the JSON report in --out."""
  out = tmp_path / "serve.json"
  table = _run([sys.executable, str(REPO / "benchmarks" / "serve_benchmark.py"), "--config", "tiny",
                "--requests", "4", "--concurrency", "4", "--max-tokens", "4", "--image-every", "4",
                "--image-steps", "2", "--warmup-rounds", "0", "--out", str(out)], tmp_path)
  res = json.loads(out.read_text())
  assert res["requests"] == 4 and res["image_requests"] == 1 and res["warm"] is False
  assert 0 < res["p50_s"] <= res["p95_s"] <= res["wall_s"] and res["throughput_req_s"] > 0
  assert 1 <= res["batches"] <= 4 and res["chat_p50_s"] > 0 and res["image_p50_s"] > 0
  assert "| p50 s | p95 s |" in table and f"| {res['p50_s']} | {res['p95_s']} |" in table


def test_profile_parts_and_the_part_by_part_comparison(tmp_path):
  """profile_ops's "by module" parts come from the name stacks; compare_parts puts
  ours and the original's side by side with the formula's FLOPs per part."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import compare_parts  # pylint: disable=import-outside-toplevel
  import profile_ops  # pylint: disable=import-outside-toplevel
  part = profile_ops.module_part
  assert part("transpose(jvp(Showo2))/Showo2.llm/model/layers_6/mlp/down_proj/dot_general") == "LLM MLP"
  assert part("jvp(Showo2)/Showo2.llm/model/layers_2/self_attn/while/body/closed_call/cond") == "LLM attention"
  assert part("jvp(Showo2)/Showo2.flow/diffusion_head_a/layers_0/self_attn/q_proj/dot_general") == \
      "flow head attention"
  assert part("jvp(Showo2)/Showo2.flow/diffusion_head_a/layers_0/mlp/up_proj/dot_general") == "flow head rest"
  assert part("transpose(jvp(Showo2))/Showo2.encode_visual/und_trans/layers_4/self_attn/while") == "SigLIP"
  assert part("jvp()/while/body/closed_call/cond/branch_1_fun/Showo2.logits/showo.logits/dot_general") == \
      "lm_head + NTP loss"
  assert part("jvp()/while/body/closed_call/cond") == "lm_head + NTP loss"
  assert part("jit(train_step)/sqrt") == "optimizer (AdamW + clip)"
  assert part("jvp(Showo2)/Showo2.llm/model/layers_1/input_layernorm/mul") == "LLM norms/residuals"
  ours = dict(wall_s_per_run=10.0, modules={"LLM MLP": dict(share=0.5), "other": dict(share=0.5)})
  original = dict(step_s=20.0, parts={"LLM MLP": dict(total_s=4.0), "lm_head": dict(total_s=1.0),
                                      "NTP loss": dict(total_s=2.0)})
  flops = {"LLM MLP": 100e9, "lm_head": 30e9}
  rows = {r["part"]: r for r in compare_parts.table(ours, original, flops)}
  assert rows["LLM MLP"]["ours_s"] == 5.0 and rows["LLM MLP"]["ours_gflops"] == 20.0
  assert rows["LLM MLP"]["original_gflops"] == 25.0
  assert rows["lm_head + NTP loss"]["original_s"] == 3.0 and rows["lm_head + NTP loss"]["ours_s"] == 0.0
  assert rows["step"]["original_over_ours"] == 2.0 and rows["step"]["gflop"] == 130.0


@pytest.mark.parametrize("script,flag", [("train_benchmark.py", "--config"),
                                         ("inference_benchmark.py", "--configs"),
                                         ("profile_ops.py", "--config"),
                                         ("accelerator_suite.py", "--config"),
                                         ("compare_original.py", "--train-config")])
def test_an_unknown_config_is_a_one_line_error(tmp_path, script, flag):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  p = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), flag, "nosuch"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
  assert f"{flag}: unknown config 'nosuch'" in p.stderr and "tiny_train" in p.stderr


def test_profile_counts_executed_matmul_flops_and_self_time():
  """The trace's self times and executed FLOPs: a scan of 4 steps whose `cond` runs a
  256^3 matmul in 3 of them. The matmul is counted 3 times (not the costliest branch
  x 4, as a jaxpr count would), and the while/cond thunks keep only their own time
  (their events enclose the body's)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import profile_ops  # pylint: disable=import-outside-toplevel
  from showo2_jax.train import flops  # pylint: disable=import-outside-toplevel

  def body(c, x):
    return jax.lax.cond(x > 0, lambda c: jnp.tanh(c @ c), lambda c: c * 2, c), None
  f = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs)[0])
  c, xs = jnp.full((256, 256), 0.01), jnp.array([1., -1., 1., 1.])
  hlo = f.lower(c, xs).compile().as_text()
  assert sum(flops.hlo_instruction_flops(hlo).values()) > 0
  res = profile_ops.trace_ops(lambda: f(c, xs), 2, hlo)
  assert res["executed_matmul_tflop"] * 1e12 == 3 * 2 * 256 ** 3
  (mm,) = [r for r in res["ops"] if r["kind"] == "matmul"]
  assert mm["runs"] == 3 and mm["gflop"] == 3 * 2 * 256 ** 3 / 1e9
  assert abs(sum(r["seconds"] for r in res["ops"]) - res["op_s_per_run"]) < 1e-9
  assert res["op_s_per_run"] <= res["wall_s_per_run"] * 1.5
  control = sum(r["seconds"] for r in res["ops"] if r["kind"] == "loop/cond control")
  assert control < mm["seconds"]


def test_profile_self_times_subtract_nested_events():
  secs, count = __import__("profile_ops").self_times([[(0, 100, "while"), (10, 30, "dot"), (50, 20, "cond"),
                                                       (55, 10, "add"), (200, 5, "copy")]])
  assert {k: round(v * 1e9) for k, v in secs.items()} == {"while": 50, "dot": 30, "cond": 10, "add": 10,
                                                          "copy": 5}
  assert count["while"] == 1 and count["add"] == 1


def test_profile_bound_arithmetic():
  """10 s step, 70% matmul (7 s) running 0.7 TFLOP against a 0.2 TFLOP/s peak (3.5 s
  at peak): floor 3.5 + 3 = 6.5 s; the original at 9 s: now 0.9x, bound 9 / 6.5;
  1.2x needs <= 7.5 s: 0.5 s of non-matmul with the matmuls as now, 4 s at peak,
  or the matmuls at 3.5 / 4.5 of the peak with the non-matmul time as now."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import profile_ops  # pylint: disable=import-outside-toplevel
  b = profile_ops.bound(10.0, 0.7, 0.7, 0.2, original_s=9.0, target=1.2)
  approx = lambda a, e: abs(a - e) < 1e-9  # noqa: E731
  assert approx(b["matmul_s"], 7.0) and approx(b["non_matmul_s"], 3.0)
  assert approx(b["matmul_fraction_of_peak"], 0.5) and approx(b["floor_s"], 6.5)
  assert approx(b["ratio_now"], 0.9) and approx(b["ratio_bound"], 9 / 6.5)
  assert approx(b["budget_s"], 7.5) and approx(b["non_matmul_allowed_s"], 0.5)
  assert approx(b["non_matmul_allowed_at_peak_s"], 4.0) and approx(b["matmul_fraction_needed"], 3.5 / 4.5)
  assert profile_ops.bound(10.0, 0.2, 0.2, 0.2, original_s=9.0)["matmul_fraction_needed"] is None
  assert profile_ops.bound(10.0, 0.7, 0.7, 0.2)["ratio_bound"] is None


@pytest.mark.slow
def test_profile_ops_train_prints_the_bound_and_writes_json(tmp_path):
  """The close-path command end to end on tiny_train: the breakdown, the executed
  matmul FLOPs, the bound against a given original step, one JSON."""
  out = tmp_path / "profile.json"
  stdout = _run([sys.executable, str(REPO / "benchmarks" / "profile_ops.py"), "--task", "train",
                 "--config", "tiny_train", "--steps", "1", "--original-step-s", "5.0", "--json", str(out)],
                tmp_path)
  res = json.loads(out.read_text())
  b = res["bound"]
  assert res["executed_matmul_tflop"] > 0 and b["original_s"] == 5.0
  # the bound scales the shares by the untraced step (the profiler slows the traced one)
  assert 0 < res["untraced_wall_s_per_run"] and b["step_s"] == res["untraced_wall_s_per_run"]
  assert abs(b["matmul_s"] + b["non_matmul_s"] - res["untraced_wall_s_per_run"]) < 1e-9
  assert abs(sum(v["share"] for v in res["kinds"].values()) - 1) < 1e-9
  assert b["floor_s"] <= res["untraced_wall_s_per_run"] + 1e-9 or b["matmul_fraction_of_peak"] > 1
  assert "ratio bound (original / floor)" in stdout and "by kind of op" in stdout


@pytest.mark.slow
def test_profile_ops_decode_counts_the_loop_body_per_token(tmp_path):
  """`--task decode` profiles compare_original's decode (64 greedy tokens after an
  image): the while body's ops are counted once per decoded token."""
  out = tmp_path / "profile.json"
  stdout = _run([sys.executable, str(REPO / "benchmarks" / "profile_ops.py"), "--task", "decode",
                 "--config", "tiny", "--steps", "1", "--json", str(out)], tmp_path)
  res = json.loads(out.read_text())
  assert res["task"] == "decode" and "matmul" in res["kinds"]
  body = [r for r in res["ops"] if r["kind"] == "matmul" and r["runs"] >= 60]
  assert body, [(r["op"], r["runs"]) for r in res["ops"][:10]]
  assert "decode [tiny]" in stdout



@pytest.mark.slow
def test_pod_compile_compiles_tiny_for_two_tpu_slices(tmp_path):
  """benchmarks/pod_compile.py --slices 2: tiny_train's step compiled by the TPU compiler
  for 2 x v5p:2x2x1 (8 abstract chips over DCN, no TPU), its row written and tabled."""
  from tests.train import runs  # pylint: disable=import-outside-toplevel
  out = tmp_path / "pod.json"
  p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pod_compile.py"), "--configs",
                      "tiny_train", "--topologies", "v5p:2x2x1", "--slices", "2", "--rows-per-chip",
                      "1", "--set", "mesh.data=1", "mesh.fsdp=-1", "--json", str(out)], cwd=tmp_path, env=runs.env(1), capture_output=True,
                     text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  [row] = json.loads(out.read_text())
  assert "error" not in row, row
  assert row["topology"] == "2 x v5p:2x2x1" and row["devices"] == 8
  assert row["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}      # data over DCN, fsdp inside a slice
  assert row["device_kind"] == "TPU v5" and row["hbm_gib"] == 95
  assert 0 < row["argument_gib"] < 1 and 0 < row["peak_gib"] < 1 and row["rows_per_chip"] == 1
  assert row["collectives"].get("all-reduce", 0) > 0                 # the cross-slice gradient sum
  assert "| tiny_train | 2 x v5p:2x2x1 | dense | 1 | " in p.stdout
  assert "FLOP check tiny_train 2 x v5p:2x2x1 dense" in p.stdout
