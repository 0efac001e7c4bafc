"""init.sources: every starting point of the paper's recipe, param for param.

Tiny HF Qwen2 / SigLIP directories and a pre-distilled semantic-layer file are
made here (transformers' random init, saved locally); the tiny Show-o2 model is
then initialised from them exactly as the stage configs do, and each param is
compared with the tensor of the source the recipe says it comes from.
"""
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import _train_common as tc
from configs import models
from showo2_jax import config_lib, param_mapping, paths
from showo2_jax import sharding as sharding_lib
from showo2_jax.convert import checkpoint_io, hf, showo2_keys
from showo2_jax.train import checkpointing, optimizer as optimizer_lib, partition, tasks, warm_start
from showo2_jax.train import state as state_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STAGE1_FRESH = tc.STAGE1_FRESH


def _config(llm_hidden=None, tie=True, scan=False):
  c = config_lib.load_config("tiny_train")
  if llm_hidden:
    c.model.llm.hidden_size = llm_hidden
    c.model.llm.head_dim = llm_hidden // c.model.llm.num_heads
  c.model.llm.tie_word_embeddings = tie
  c.model.scan_layers = scan
  c.train.frozen = tc.STAGE1_FROZEN
  return c


_LAYOUTS = {}


def _layout(c):
  """(state layout, task, mesh) of config `c`, as the trainer builds them; built once
  per (task, model, frozen, optimizer, mesh), the parts of `c` they read (tracing the
  model's init twice costs seconds; the tests differ in their init blocks)."""
  key = tuple(str(x) for x in (c.train.get("task", "showo2"), c.model, c.train.get("frozen"),
                               c.optim, c.mesh, c.max_seq_len))
  if key not in _LAYOUTS:
    task = tasks.build(c)
    mesh = sharding_lib.create_mesh(c.mesh)
    with jax.set_mesh(mesh), sharding_lib.axis_rules():
      lay = state_lib.layout(task.init_params,
                             lambda labels: optimizer_lib.make_optimizer(c.optim, 10, labels),
                             task.labels, mesh)
    _LAYOUTS[key] = lay, task, mesh
  return _LAYOUTS[key]


def _init(c):
  """(random params, warm-started params, layout, task) as the trainer builds them
  (the random params are drawn on the host: compiling the model's init costs a
  minute on a loaded CI machine and is not what is tested here)."""
  lay, task, mesh = _layout(c)
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    rng = np.random.default_rng(c.seed)
    random = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), lay.abstract.params)
    params = state_lib.place(random, lay.abstract.params)
    loaded = warm_start.load(params, c.init, lay.abstract.params, task.model_config)
  return random, jax.tree.map(np.asarray, loaded), lay, task


def _flat(tree):
  return {partition.path_name(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _qwen2_dir(path, hidden=64, tie=True, vocab=320, seed=0):
  torch.manual_seed(seed)
  llm = models.tiny().llm
  cfg = transformers.Qwen2Config(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=llm.intermediate_size,
      num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
      num_key_value_heads=llm.num_kv_heads, tie_word_embeddings=tie, rope_theta=llm.rope_theta,
      rms_norm_eps=llm.rms_norm_eps)
  model = transformers.Qwen2ForCausalLM(cfg)
  model.save_pretrained(path)
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _siglip_dir(path):
  torch.manual_seed(1)
  s = models.tiny().siglip
  cfg = transformers.SiglipVisionConfig(
      hidden_size=s.hidden_size, intermediate_size=s.intermediate_size, num_hidden_layers=s.num_layers + 1,
      num_attention_heads=s.num_heads, image_size=s.position_grid * 14, patch_size=14,
      layer_norm_eps=s.layer_norm_eps)
  model = transformers.SiglipVisionModel(cfg)
  model.save_pretrained(path)
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _semantic_file(path, random_flat, fmt):
  """A pre-distilled file (Show-o2 key names, spec 9.1) with values unlike any other source."""
  rng = np.random.default_rng(5)
  params = {k: rng.standard_normal(np.shape(v)).astype(np.float32) for k, v in random_flat.items()
            if k.split("/")[0] in warm_start.SEMANTIC_PREFIXES}
  sd = showo2_keys.params_to_state_dict(param_mapping.unflatten(params))
  if fmt == "pt":
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  else:
    checkpoint_io.save_safetensors(sd, str(path), metadata={"format": "pt"})
  return sd


def _torch_value(flat_name, sd, key_fn):
  key, layout = showo2_keys.torch_key(flat_name)
  return param_mapping.to_flax_layout(np.asarray(sd[key_fn(key)]), layout)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("init_sources")
  qwen = _qwen2_dir(root / "qwen2")
  siglip = _siglip_dir(root / "siglip")
  return root, qwen, siglip


@pytest.mark.parametrize("scan,fmt", [(False, "pt"), (True, "safetensors")])
def test_stage1_starts_from_qwen2_and_predistilled_layers(hf_dirs, tmp_path, scan, fmt):
  """Stage 1 (spec 7.2): Qwen2.5 for showo, SigLIP, then the pre-distilled layers on top,
  the generation side fresh. Every param equals its source's tensor."""
  root, qwen, _ = hf_dirs
  c = _config(scan=scan)
  random, _, _, _ = _init(c)
  random_unrolled = param_mapping.unroll_flat(_flat(random))
  semantic = _semantic_file(tmp_path / f"pre-distilled_semantic_layers.{fmt}", random_unrolled, fmt)
  c.init.sources = (f"qwen2:{root / 'qwen2'}", f"siglip:{root / 'siglip'}",
                    f"semantic:{tmp_path / f'pre-distilled_semantic_layers.{fmt}'}")
  c.init.fresh = STAGE1_FRESH
  _, loaded, lay, task = _init(c)
  flat = param_mapping.unroll_flat(_flat(loaded))
  assert set(flat) == set(random_unrolled)
  vocab = c.model.llm.vocab_size
  for name, value in flat.items():
    top = name.split("/")[0]
    if top == "showo":   # HF Qwen2: model.* keys, the first `vocab` embedding rows
      want = _torch_value(name, qwen, lambda k: k[len("showo."):])
      if "embed_tokens" in name:
        want = want[:vocab]
    elif top in warm_start.SEMANTIC_PREFIXES:   # pre-distilled overrides SigLIP
      want = _torch_value(name, semantic, lambda k: k)
    else:
      want = random_unrolled[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  table = warm_start.source_table(c.init, lay.abstract.params, task.model_config)
  lines = {l.split()[0]: l for l in table.splitlines()[1:]}
  assert "qwen2:" in lines["showo"] and "semantic:" in lines["und_trans"]
  assert warm_start.FRESH in lines["diffusion_head_a"]
  assert "siglip" not in table   # fully overridden by the pre-distilled file


def test_siglip_source_gives_und_trans_and_position_table(hf_dirs):
  root, _, siglip = hf_dirs
  c = _config()
  c.init.sources = (f"siglip:{root / 'siglip'}",)
  c.init.fresh = STAGE1_FRESH + ("showo", "image_embedder_und")
  _, loaded, _, _ = _init(c)
  flat = _flat(loaded)
  prefix = hf.siglip_prefix(siglip)   # 'vision_model.' or '' (transformers >= 5)
  np.testing.assert_array_equal(flat["position_embedding/embedding"],
                                siglip[prefix + "embeddings.position_embedding.weight"])
  for i in range(c.model.siglip.num_layers):
    np.testing.assert_array_equal(flat[f"und_trans/layers_{i}/mlp/fc1/kernel"],
                                  siglip[f"{prefix}encoder.layers.{i}.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(flat[f"und_trans/layers_{i}/layer_norm2/bias"],
                                  siglip[f"{prefix}encoder.layers.{i}.layer_norm2.bias"])


def test_siglip_source_in_a_bucket(hf_dirs, gcs_bucket):
  """An HF directory at gs:// (emulator) is copied to a temporary folder and read
  like a local one: the same params."""
  root, _, _ = hf_dirs
  remote = gcs_bucket + "/models/siglip"
  paths.copy_from_local(root / "siglip", remote)
  c = _config()
  c.init.fresh = STAGE1_FRESH + ("showo", "image_embedder_und")
  c.init.sources = (f"siglip:{root / 'siglip'}",)
  _, local, _, _ = _init(c)
  c.init.sources = (f"siglip:{remote}",)
  _, from_bucket, _, _ = _init(c)
  a, b = _flat(local), _flat(from_bucket)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _save_run(workdir, c, params, lay):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1,
                                    async_save=False)
  with jax.set_mesh(lay.mesh):
    placed = state_lib.place(params, lay.abstract.params)
    state = state_lib.create(placed, state_lib.place(np.zeros(2, np.uint32), lay.abstract.rng), lay)
    ckpt.save(7, state, None, force=True)
  ckpt.close()


def test_transfer_1p5b_to_7b(hf_dirs, tmp_path):
  """stage1_7b:a (spec 7.2): the wider LLM equals its Qwen source; the flow head, time
  embedder and semantic layers equal the smaller run's; LLM-width layers are fresh."""
  small = _config()
  random_small, _, lay_small, _ = _init(small)
  rng = np.random.default_rng(3)
  trained = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), random_small)
  _save_run(tmp_path / "run_1p5b", small, trained, lay_small)

  qwen_big = _qwen2_dir(tmp_path / "qwen_7b", hidden=96, tie=False, seed=9)
  big = _config(llm_hidden=96, tie=False)
  exclude = "|".join("-" + e for e in tc.TRANSFER_1P5B_TO_7B_EXCLUDE)
  big.init.sources = (f"qwen2:{tmp_path / 'qwen_7b'}", f"checkpoint:{tmp_path / 'run_1p5b'}#{exclude}")
  big.init.fresh = ("image_embedder_gen", "fusion_proj", "diff_proj", "time_embed_proj")
  shipped = config_lib.load_config("stage1_7b:a").init   # the test runs what the config says
  assert shipped.sources[0].startswith("qwen2:") and shipped.sources[1].endswith("#" + exclude)
  assert tuple(shipped.fresh) == big.init.fresh
  random_big, loaded, _, _ = _init(big)
  flat, src_small, fresh = _flat(loaded), _flat(trained), _flat(random_big)
  assert "showo/lm_head/kernel" in flat   # untied, as Qwen2.5-7B
  for name, value in flat.items():
    top = name.split("/")[0]
    if top == "showo":
      want = _torch_value(name, qwen_big, lambda k: k[len("showo."):])
      if "embed_tokens" in name:
        want = want[:big.model.llm.vocab_size]
      if "lm_head" in name:
        want = want[:, :big.model.llm.vocab_size]
    elif top in tc.TRANSFER_1P5B_TO_7B_EXCLUDE:
      want = fresh[name]
    else:   # diffusion_head_a/b, time_embed, image_embedder_und, position_embedding, und_trans
      want = src_small[name]
    np.testing.assert_array_equal(value, want, err_msg=name)


def test_from_original_under_the_training_mesh():
  """`init.from_original` on the shipped fixture (was: NamedSharding TypeError)."""
  fixture = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures", "showo2")
  if not os.path.isdir(fixture):
    fixture = "/work/shared/fixtures/showo2"
  if not os.path.isdir(fixture):
    pytest.skip("shared fixtures not present")
  c = _config()
  c.init.from_original = fixture
  _, loaded, _, _ = _init(c)
  with checkpoint_io.StateDict(fixture) as sd:
    for name, value in _flat(loaded).items():
      np.testing.assert_array_equal(value, _torch_value(name, sd, lambda k: k), err_msg=name)


def test_every_param_must_be_accounted_for(hf_dirs):
  root, _, _ = hf_dirs
  c = _config()
  c.init.sources = (f"qwen2:{root / 'qwen2'}",)
  with pytest.raises(warm_start.InitError, match="come from no source.*init.fresh"):
    _init(c)
  c.init.fresh = STAGE1_FRESH + ("und_trans", "position_embedding", "image_embedder_und", "typo_layer")
  with pytest.raises(warm_start.InitError, match="typo_layer"):
    _init(c)


def test_source_errors_name_the_source(hf_dirs, tmp_path):
  root, _, _ = hf_dirs
  c = _config(llm_hidden=96)   # wider than the Qwen2 dir
  c.init.sources = (f"qwen2:{root / 'qwen2'}",)
  c.init.fresh = ("",)
  with pytest.raises(warm_start.InitError, match="qwen2:.*wrong shapes"):
    _init(c)
  c = _config()
  c.init.sources = (f"checkpoint:{tmp_path}",)
  with pytest.raises(warm_start.InitError, match="no checkpoints"):
    _init(c)
  with pytest.raises(warm_start.InitError, match="unknown kind"):
    warm_start.parse_source("hf:/x")


def test_source_entry_forms():
  s = warm_start.parse_source("checkpoint:gs://b/run#diffusion_head|-showo")
  assert (s.kind, s.path, s.patterns) == ("checkpoint", "gs://b/run", ("diffusion_head", "-showo"))
  assert warm_start.parse_source(("qwen2", "/m", ("showo",))).patterns == ("showo",)
  assert warm_start.selects("time_embed/mlp_0/kernel", ("-time_embed_proj",))
  assert not warm_start.selects("time_embed_proj/kernel", ("-time_embed_proj",))


def test_frozen_pattern_matching_nothing_is_an_error():
  c = _config()
  c.train.frozen = ("showo", "und_tran5")
  with pytest.raises(ValueError, match="und_tran5"):
    _init(c)


def test_shipped_stage_configs_chain(hf_dirs, tmp_path):
  """stage1_1p5b:a's own init block (paths replaced, tiny model) starts from Qwen2 +
  the pre-distilled file, and stage2_1p5b:a's starts from that run's checkpoint."""
  root, qwen, _ = hf_dirs
  s1 = config_lib.load_config("stage1_1p5b:a")
  s1.model = _config().model
  random, _, _, _ = _init(_config())
  semantic = _semantic_file(tmp_path / "sem.safetensors",
                            param_mapping.unroll_flat(_flat(random)), "safetensors")
  kinds = [warm_start.parse_source(e).kind for e in s1.init.sources]
  assert kinds == ["qwen2", "semantic"]
  s1.init.sources = (f"qwen2:{root / 'qwen2'}", f"semantic:{tmp_path / 'sem.safetensors'}")
  _, stage1, lay, _ = _init(s1)
  flat1 = _flat(stage1)
  np.testing.assert_array_equal(flat1["showo/model/norm/scale"], qwen["model.norm.weight"])
  np.testing.assert_array_equal(flat1["position_embedding/embedding"],
                                semantic["position_embedding.weight"])
  _save_run(tmp_path / "stage1", s1, stage1, lay)

  s2 = config_lib.load_config("stage2_1p5b:a")
  s2.model = s1.model
  assert [warm_start.parse_source(e).kind for e in s2.init.sources] == ["checkpoint"]
  s2.init.sources = (f"checkpoint:{tmp_path / 'stage1'}",)
  _, stage2, _, _ = _init(s2)
  for name, value in _flat(stage2).items():
    np.testing.assert_array_equal(value, flat1[name], err_msg=name)


def test_orbax_source_gives_converted_params(tmp_path):
  """`orbax:` reads params converted by `showo2-jax convert` (here saved with orbax_io,
  unrolled layers) into a scanned model: every param equals the stored one."""
  from showo2_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  plain = _config()
  random, _, _, task = _init(plain)
  rng = np.random.default_rng(11)
  stored = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), random)
  orbax_io.save_params(str(tmp_path / "orbax"), stored, task.model_config, scan_layers=False)
  c = _config(scan=True)
  c.init.sources = (f"orbax:{tmp_path / 'orbax'}",)
  _, loaded, lay, task = _init(c)
  flat, want = param_mapping.unroll_flat(_flat(loaded)), _flat(stored)
  assert set(flat) == set(want)
  for name, value in flat.items():
    np.testing.assert_array_equal(value, want[name], err_msg=name)
  assert "orbax:" in warm_start.source_table(c.init, lay.abstract.params, task.model_config)


def test_semantic_source_reads_a_distill_semantic_run(hf_dirs, tmp_path):
  """`semantic:<workdir>` of a distill_semantic run: its three groups, the rest of the
  stage-1 start from Qwen2 and fresh."""
  root, qwen, _ = hf_dirs
  d = config_lib.load_config("distill_semantic:tiny")
  random_d, _, lay_d, _ = _init(d)
  rng = np.random.default_rng(4)
  trained = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), random_d)
  _save_run(tmp_path / "distill", d, trained, lay_d)
  c = _config()
  c.init.sources = (f"qwen2:{root / 'qwen2'}", f"semantic:{tmp_path / 'distill'}")
  c.init.fresh = STAGE1_FRESH
  _, loaded, _, _ = _init(c)
  flat, want = _flat(loaded), _flat(trained)
  assert {n.split("/")[0] for n in want} == set(warm_start.SEMANTIC_PREFIXES)
  for name, value in flat.items():
    if name.split("/")[0] in warm_start.SEMANTIC_PREFIXES:
      np.testing.assert_array_equal(value, want[name], err_msg=name)
  np.testing.assert_array_equal(flat["showo/model/norm/scale"], qwen["model.norm.weight"])


def test_transfer_to_7b_from_an_original_showo2_dir(tmp_path, showo2_fixture_dir):
  """The documented alternative source of the 7B transfer: the released 1.5B model (an
  original Show-o2 directory, here the shared tiny fixture) with stage1_7b:a's patterns."""
  qwen_big = _qwen2_dir(tmp_path / "qwen_7b", hidden=96, tie=False, seed=9)
  big = _config(llm_hidden=96, tie=False)
  exclude = "|".join("-" + e for e in tc.TRANSFER_1P5B_TO_7B_EXCLUDE)
  big.init.sources = (f"qwen2:{tmp_path / 'qwen_7b'}", f"original:{showo2_fixture_dir}#{exclude}")
  big.init.fresh = tuple(config_lib.load_config("stage1_7b:a").init.fresh)
  random_big, loaded, _, _ = _init(big)
  fresh = _flat(random_big)
  with checkpoint_io.StateDict(str(showo2_fixture_dir)) as sd:
    for name, value in _flat(loaded).items():
      top = name.split("/")[0]
      if top == "showo":
        want = _torch_value(name, qwen_big, lambda k: k[len("showo."):])
        want = want[:big.model.llm.vocab_size] if "embed_tokens" in name else want
        want = want[:, :big.model.llm.vocab_size] if "lm_head" in name else want
      elif top in tc.TRANSFER_1P5B_TO_7B_EXCLUDE:
        want = fresh[name]
      else:
        want = _torch_value(name, sd, lambda k: k)
      np.testing.assert_array_equal(value, want, err_msg=name)
