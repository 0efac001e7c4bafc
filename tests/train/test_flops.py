"""The model-FLOP formula split by part sums to the formula."""
import pytest

from showo2_jax.config_lib import load_config
from showo2_jax.models.config import Showo2Config
from showo2_jax.train import flops


@pytest.mark.parametrize("name", ["small_train", "stage2_1p5b:b"])
def test_parts_sum_to_the_train_flops(name):
  c = load_config(name)
  model = Showo2Config.from_config_dict(c.model)
  parts = flops.train_flops_by_part(model, 1024, 1, 2)
  assert set(parts) == {"LLM attention", "LLM MLP", "lm_head", "SigLIP", "flow head attention",
                        "flow head rest", "projector/STF"}
  assert all(v > 0 for v in parts.values())
  total = flops.train_flops_per_step(model, 1024, 1, 2)
  assert sum(parts.values()) == pytest.approx(total, rel=1e-12)


def test_per_instruction_hlo_flops_inline_fusions_not_loop_bodies():
  """`flops.hlo_instruction_flops`: a dot counts its own 2*M*N*K, a fusion the dots and
  convolutions of the computation it calls (recursively), a while loop none of its
  body's (its instructions are traced on their own); the per-program count multiplies
  the same per-instruction FLOPs by the loop's trips."""
  text = (
      "%inner (a: f32[4,8], b: f32[8,16]) -> f32[4,16] {\n"
      "  %a = f32[4,8]{1,0} parameter(0)\n"
      "  %b = f32[8,16]{1,0} parameter(1)\n"
      "  ROOT %d1 = f32[4,16]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}\n"
      "}\n"
      "%outer (c: f32[4,8], e: f32[8,16]) -> f32[4,16] {\n"
      "  %c = f32[4,8]{1,0} parameter(0)\n"
      "  %e = f32[8,16]{1,0} parameter(1)\n"
      "  %f1 = f32[4,16]{1,0} fusion(%c, %e), kind=kOutput, calls=%inner\n"
      "  ROOT %t = f32[4,16]{1,0} tanh(%f1)\n"
      "}\n"
      "%cond (p: (s32[], f32[4,8])) -> pred[] {\n"
      "  %p = (s32[], f32[4,8]) parameter(0)\n"
      "  %i = s32[] get-tuple-element(%p), index=0\n"
      "  %n = s32[] constant(7)\n"
      "  ROOT %lt = pred[] compare(%i, %n), direction=LT\n"
      "}\n"
      "%body (q: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {\n"
      "  %q = (s32[], f32[4,8]) parameter(0)\n"
      "  %x = f32[4,8]{1,0} get-tuple-element(%q), index=1\n"
      "  %w = f32[8,16]{1,0} constant({...})\n"
      "  %f2 = f32[4,16]{1,0} fusion(%x, %w), kind=kLoop, calls=%outer\n"
      "  %d2 = f32[4,4]{1,0} dot(%f2, %f2), lhs_contracting_dims={1}, rhs_contracting_dims={1}\n"
      "  ROOT %r = (s32[], f32[4,8]) tuple(%i, %x)\n"
      "}\n"
      "ENTRY %main (z: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {\n"
      "  %z = (s32[], f32[4,8]) parameter(0)\n"
      "  ROOT %loop = (s32[], f32[4,8]) while(%z), condition=%cond, body=%body\n"
      "}\n")
  mm, scores = 2 * 4 * 16 * 8, 2 * 4 * 4 * 16
  assert flops.hlo_instruction_flops(text) == {"d1": mm, "f1": mm, "f2": mm, "d2": scores}
  counted = flops.hlo_matmul_flops(text)
  assert counted["loops"] == [("body", 7)] and counted["flops"] == 7 * (mm + scores), counted
