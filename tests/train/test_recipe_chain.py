"""The paper's recipe, chained through the real CLI (issue "Done when"):

tiny HF Qwen2 and SigLIP directories and a tiny pre-distilled semantic-layer file,
made here -> `train --config <stage 1a> --data FILE` starts from them and trains a
few steps on image-text JSONL files -> `train --config <stage 2a> --data FILE`
starts from that run and trains on image-text + LLaVA files.

The stage configs are the shipped `stage1_1p5b:a` / `stage2_1p5b:a` (their
freezing, fresh layers, loss weights, optimizer groups and schedule) with the
tiny model put in (`_TINY_STAGE` below). What is checked:
- stage 1's final params: the frozen LLM equals the Qwen2 directory, the frozen
  semantic layers equal the pre-distilled file (overriding the SigLIP dir) bit for
  bit; the start table names each group's source (the generation side: random init);
- stage 2a's final params: everything but `fusion_proj` (the only trained group in
  2a) equals stage 1's final params, `fusion_proj` moved.
"""
import textwrap

import jax
import numpy as np
import pytest

from configs import _train_common as tc
from showo2_jax import config_lib
from showo2_jax import param_mapping
from showo2_jax.convert import orbax_io
from showo2_jax.data import testing
from tests.train import runs
from tests.train import test_init_sources as sources

pytest.importorskip("torch")
pytest.importorskip("transformers")

_TINY_STAGE = '''
from configs import stage1_1p5b, stage2_1p5b, tiny_train


def get_config(arg):
  """`1a` | `2a`: the shipped stage config with the tiny model and a tiny batch."""
  stage, sub = arg[0], arg[1]
  c = (stage1_1p5b if stage == "1" else stage2_1p5b).get_config(sub)
  t = tiny_train.get_config()
  c.model, c.vae, c.resolution, c.mesh = t.model, t.vae, t.resolution, t.mesh
  c.max_seq_len = 96
  c.train.num_steps, c.train.global_batch_size = 4, 4
  c.optim.warmup_steps = 0
  c.checkpoint.every_steps = 100000
  c.vae_checkpoint = "random"
  return c
'''


def _abstract_params(config):
  lay, _, mesh = sources._layout(config)
  return lay.abstract.params, mesh


def _final_params(workdir, config):
  abstract, mesh = _abstract_params(config)
  with jax.set_mesh(mesh):
    params = orbax_io.restore_run_params(str(workdir), abstract)
  return {k: np.asarray(v) for k, v in param_mapping.unroll_flat(sources._flat(params)).items()}


@pytest.mark.slow
def test_stage1_from_hf_dirs_and_predistilled_file_then_stage2(tmp_path):
  stage_py = tmp_path / "tiny_stage.py"
  stage_py.write_text(_TINY_STAGE)
  s1 = config_lib.load_config(f"{stage_py}:1a")
  shipped = config_lib.load_config("stage1_1p5b:a")
  assert tuple(s1.train.frozen) == tc.STAGE1_FROZEN and tuple(s1.init.fresh) == tc.STAGE1_FRESH
  assert [e.split(":")[0] for e in shipped.init.sources] == ["qwen2", "semantic"]

  # The starting points: Qwen2 (+ its tokenizer, as a real Qwen2.5-Instruct dir), SigLIP,
  # and a pre-distilled file whose values differ from both.
  qwen_dir, siglip_dir = tmp_path / "Qwen2-tiny", tmp_path / "siglip-tiny"
  qwen = sources._qwen2_dir(qwen_dir)
  testing.build_test_tokenizer(qwen_dir)
  sources._siglip_dir(siglip_dir)
  abstract, _ = _abstract_params(s1)
  shapes = {k: np.zeros(v.shape, np.float32)
            for k, v in param_mapping.unroll_flat(sources._flat(abstract)).items()}
  semantic_path = tmp_path / "pre-distilled_semantic_layers.pt"
  semantic = sources._semantic_file(semantic_path, shapes, "pt")

  t2i = testing.write_image_text_dataset(tmp_path / "t2i", 6, size=(72, 64))
  llava = testing.write_llava_dataset(tmp_path / "llava", 6, size=(64, 80))
  data1, data2 = tmp_path / "stage1.yaml", tmp_path / "stage2.yaml"
  data1.write_text(textwrap.dedent(f"""\
      streams:
        t2i: {{task: t2i, path: "{t2i}", batch_size: 3}}
        mmu: {{task: captioning, path: "{t2i}", batch_size: 1}}
      """))
  data2.write_text(textwrap.dedent(f"""\
      streams:
        t2i: {{task: t2i, path: "{t2i}", batch_size: 2}}
        mmu: {{task: llava, path: "{llava}", stage: pre-training, batch_size: 2}}
      """))
  common = (f"--config.tokenizer_path={qwen_dir}", *runs.LOGGED)

  # Stage 1a: the LLM from Qwen2, SigLIP's layers overridden by the pre-distilled file.
  init1 = f'("qwen2:{qwen_dir}", "siglip:{siglip_dir}", "semantic:{semantic_path}")'
  m1 = runs.run(tmp_path / "s1", "--data", str(data1), f"--config.init.sources={init1}", *common,
                config=f"{stage_py}:1a", timeout=900)
  assert sorted(m1) == [1, 2, 3, 4] and all(np.isfinite(m1[s]["loss"]) for s in m1)
  log1 = runs.log_tail(tmp_path / "s1", chars=100_000)
  assert "init: where each param group comes from" in log1
  after1 = _final_params(tmp_path / "s1", s1)
  groups = {n.split("/")[0] for n in after1}
  table = log1[log1.index("init: where each param group comes from"):].splitlines()[1:]
  rows = {l.split()[0]: l for l in table if l.split() and l.split()[0] in groups}
  assert rows.keys() == groups, sorted(rows)
  assert "qwen2:" in rows["showo"] and "semantic:" in rows["und_trans"]
  assert "random init" in rows["diffusion_head_a"] and "siglip:" not in "".join(rows.values())
  vocab = s1.model.llm.vocab_size
  for name, value in after1.items():
    top = name.split("/")[0]
    if top == "showo":
      want = sources._torch_value(name, qwen, lambda k: k[len("showo."):])
      want = want[:vocab] if "embed_tokens" in name else want
      want = want[:, :vocab] if "lm_head" in name else want
      np.testing.assert_array_equal(value, want, err_msg=name)
    elif top in tc.STAGE1_FROZEN:     # the semantic layers: the pre-distilled file's
      np.testing.assert_array_equal(value, sources._torch_value(name, semantic, lambda k: k),
                                    err_msg=name)
  assert all(m1[s]["grad_norm"] > 0 for s in m1)   # the generation side trains

  # Stage 2a from stage 1's run: only fusion_proj trains.
  s2 = config_lib.load_config(f"{stage_py}:2a")
  m2 = runs.run(tmp_path / "s2", "--data", str(data2),
                f'--config.init.sources=("checkpoint:{tmp_path / "s1"}",)', *common,
                config=f"{stage_py}:2a", timeout=900)
  assert sorted(m2) == [1, 2, 3, 4] and all(np.isfinite(m2[s]["loss"]) for s in m2)
  after2 = _final_params(tmp_path / "s2", s2)
  assert set(after2) == set(after1)
  changed = sorted(n for n in after2 if not np.array_equal(after2[n], after1[n]))
  assert changed and all(n.startswith("fusion_proj") for n in changed), changed
