"""The train state and its sharding, derived once from the model's logical names.

The state is (step, params, opt_state, rng). `params` is the full tree (fp32
master weights, trainable and frozen); `opt_state` covers the trainable subtree
only. Shardings come from the same trick MaxText uses: build the state abstractly
from *boxed* params (each leaf carries logical axis names), so the optimizer's
moments inherit the names of their params, then map names to the mesh once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from showo2_jax import sharding as sharding_lib
from showo2_jax.train import partition


class TrainState(struct.PyTreeNode):
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: Any            # full param tree ({'showo': ..., 'diffusion_head_a': ...})
  opt_state: Any         # optimizer state of the trainable subtree
  rng: jax.Array         # uint32 (2,) base key; step s draws from fold_in(rng, s)


@dataclasses.dataclass
class StateLayout:
  """Everything needed to create, restore, jit and save a TrainState."""
  labels: dict                   # flat {path: group or FROZEN}
  tx: optax.GradientTransformation
  abstract: TrainState           # ShapeDtypeStructs carrying their shardings
  shardings: TrainState          # NamedShardings, same structure
  mesh: Mesh

  @property
  def param_shardings(self):
    return self.shardings.params


values = sharding_lib.unboxed   # the state's arrays without their logical-axis boxes


def make_state(params, rng, labels, tx) -> TrainState:
  trainable, _ = partition.split(params, labels)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable),
                    rng=rng)


@dataclasses.dataclass
class AbstractState:
  """The train state's shapes with their logical names, before any mesh."""
  labels: dict                   # flat {path: group or FROZEN}
  tx: optax.GradientTransformation
  boxed: Any                     # TrainState of boxed ShapeDtypeStructs (nn.Partitioned leaves)


def abstract_state(init_params_fn: Callable, make_tx: Callable, labels_fn: Callable) -> AbstractState:
  """init_params_fn(rng) -> boxed params (no 'params' collection key);
  labels_fn(params) -> flat labels; make_tx(labels) -> optax transform.
  Shapes only (`jax.eval_shape`): nothing runs, no mesh is needed (so the mesh can
  be chosen for it: `sharding.create_mesh(..., fit_to=abstract.boxed)`)."""
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)   # a raw PRNGKey's shape, not a value
  boxed = jax.eval_shape(init_params_fn, rng)
  labels = labels_fn(values(boxed))
  tx = make_tx(partition.trainable_labels(labels))
  boxed_state = jax.eval_shape(lambda p, r: make_state(p, r, labels, tx), boxed, rng)
  return AbstractState(labels=labels, tx=tx, boxed=boxed_state)


def layout(init_params_fn: Callable, make_tx: Callable, labels_fn: Callable, mesh: Mesh,
           rules=sharding_lib.LOGICAL_AXIS_RULES) -> StateLayout:
  """init_params_fn(rng) -> boxed params (no 'params' collection key);
  labels_fn(params) -> flat labels; make_tx(labels) -> optax transform.
  `layout_of(abstract_state(...), mesh)`, for callers without the abstract state."""
  return layout_of(abstract_state(init_params_fn, make_tx, labels_fn), mesh, rules)


def layout_of(abstract: AbstractState, mesh: Mesh, rules=sharding_lib.LOGICAL_AXIS_RULES) -> StateLayout:
  """The state's shardings on `mesh` (logical names by `rules`, fitted to the shapes).

  Runs nothing on the mesh's devices (shapes only), so `mesh` may be made of
  abstract devices of a TPU topology description (AOT on a CPU host)."""
  shardings = sharding_lib.mesh_shardings(abstract.boxed, mesh, rules)
  placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        values(abstract.boxed), shardings)
  return StateLayout(labels=abstract.labels, tx=abstract.tx, abstract=placed, shardings=shardings,
                     mesh=mesh)


def init_params(init_params_fn: Callable, lay: StateLayout, rng) -> Any:
  """Random params, created directly in their shards (never whole on one device)."""
  fn = jax.jit(lambda r: values(init_params_fn(r)), out_shardings=lay.param_shardings)
  return fn(rng)


def create(params, rng, lay: StateLayout) -> TrainState:
  """A step-0 state around `params` (already placed with `lay.param_shardings`)."""
  fn = jax.jit(lambda p, r: make_state(p, r, lay.labels, lay.tx),
               in_shardings=(lay.param_shardings, sharding_lib.replicated(lay.mesh)),
               out_shardings=lay.shardings, donate_argnums=(0,))
  return fn(params, rng)


def place(tree, abstract):
  """Host (numpy) or device arrays -> global arrays with `abstract`'s shardings and
  dtypes. Host arrays must hold the full value on every process."""
  def put(x, a):
    if isinstance(x, jax.Array):
      return jax.device_put(x.astype(a.dtype), a.sharding)
    x = np.asarray(x, dtype=a.dtype)
    if x.shape != a.shape:
      raise ValueError(f"shape {x.shape} does not match the expected {a.shape}")
    return jax.make_array_from_callback(x.shape, a.sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree, abstract)
