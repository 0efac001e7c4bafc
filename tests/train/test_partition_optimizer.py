"""Frozen params and optimizer groups by name; schedules; no state for frozen params."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import _train_common as tc
from showo2_jax.config_lib import load_config
from showo2_jax.train import optimizer, partition, tasks
from showo2_jax.train import state as state_lib


@pytest.fixture(scope="module")
def abstract_params():
  task = tasks.build(load_config("tiny_train"))
  return state_lib.values(jax.eval_shape(task.init_params, jax.random.PRNGKey(0)))


def _top(labels, label):
  return {p[0] for p, l in labels.items() if l == label}


def test_stage1_freezes_llm_and_semantic_layers(abstract_params):
  labels = partition.label_params(abstract_params, tc.STAGE1_FROZEN, {})
  assert _top(labels, partition.FROZEN) == {"showo", "image_embedder_und", "und_trans",
                                            "position_embedding"}
  assert _top(labels, "all") == {"image_embedder_gen", "fusion_proj", "time_embed",
                                 "time_embed_proj", "diff_proj", "diffusion_head_a",
                                 "diffusion_head_b"}


def test_stage2_groups_leave_time_embed_untrained(abstract_params):
  labels = partition.label_params(abstract_params, (), tc.STAGE2_GROUP_PATTERNS)
  assert _top(labels, "ve") == {"und_trans", "image_embedder_und", "image_embedder_gen",
                                "position_embedding"}
  assert _top(labels, "proj") == {"fusion_proj"}
  assert _top(labels, "showo") == {"showo", "diffusion_head_a", "diffusion_head_b", "diff_proj",
                                   "time_embed_proj"}
  assert _top(labels, partition.FROZEN) == {"time_embed"}   # spec 10.6


def test_overlapping_groups_are_an_error(abstract_params):
  with pytest.raises(ValueError, match="matches optimizer groups"):
    partition.label_params(abstract_params, (), {"a": ("showo",), "b": ("showo/model",)})


def test_frozen_params_have_no_optimizer_state(abstract_params):
  c = load_config("stage2_1p5b:b")
  labels = partition.label_params(abstract_params, tc.STAGE1_FROZEN, optimizer.group_patterns(c.optim))
  tx = optimizer.make_optimizer(c.optim, 100, partition.trainable_labels(labels))
  trainable, frozen = partition.split(abstract_params, labels)
  opt = jax.eval_shape(tx.init, trainable)
  n_train = len(jax.tree.leaves(trainable))
  # two Adam moments per trainable leaf (+ scalar counts), nothing for frozen ones
  moments = [x for x in jax.tree.leaves(opt) if x.ndim > 0]
  assert len(moments) == 2 * n_train
  assert len(jax.tree.leaves(frozen)) > 0


def test_schedules_match_the_original():
  warm = optimizer.learning_rate_schedule("constant_with_warmup", 1e-4, 1000, 100)
  assert float(warm(0)) == 0.0 and np.isclose(float(warm(50)), 5e-5) and np.isclose(float(warm(500)), 1e-4)
  cos = optimizer.learning_rate_schedule("cosine", 1e-5, 1000, 30)
  assert np.isclose(float(cos(30)), 1e-5)
  assert np.isclose(float(cos(515)), 0.5e-5, rtol=1e-3)       # half-way through the decay
  assert float(cos(1000)) < 1e-12
  c = load_config("stage2_1p5b:c")
  assert optimizer.warmup_steps(c.optim, 1000) == 30


def test_clipping_is_global_over_trainable_grads():
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  optim = load_config("tiny_train").optim
  optim.learning_rate = 1.0
  tx = optimizer.make_optimizer(optim, 10, {"a": "all", "b": "all"})
  grads = {"a": jnp.full(3, 100.0), "b": jnp.full(2, 100.0)}
  clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  assert np.isclose(float(optax.global_norm(clipped)), 1.0)
  tx.init(params)
