"""Starting a run from existing weights instead of (or on top of) random init.

`config.init` names one source (first non-empty wins):
- from_checkpoint: a previous run of ours (stage 2 starts from stage 1: the
  original copies the final stage-1 checkpoint into the next run);
- from_orbax: params converted by `showo2-jax convert`;
- from_original: an original PyTorch model directory (released weights).

`exclude` (substrings) keeps those params at their fresh random init. That is
also the 1.5B -> 7B transfer (spec 7.2, the paper's stage-1 recipe for 7B): the
flow head, time embedder and semantic layers come from the 1.5B run, while the
LLM and everything whose width follows it (image_embedder_gen, fusion_proj) and
the two width adapters between the 3584-wide LLM and the 2048-wide flow head
(diff_proj, time_embed_proj, small MLPs) start fresh.
"""
from __future__ import annotations

import logging

from flax import traverse_util

from showo2_jax.models.config import Showo2Config
from showo2_jax.train import checkpointing, partition
from showo2_jax.train import state as state_lib

log = logging.getLogger(__name__)

TRANSFER_1P5B_TO_7B_EXCLUDE = ("image_embedder_gen", "showo", "fusion_proj", "diff_proj",
                               "time_embed_proj")


def _filter(tree, keep):
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if keep(k)})


def source(init_config) -> tuple[str, str]:
  for kind in ("from_checkpoint", "from_orbax", "from_original"):
    path = init_config.get(kind, "")
    if path:
      return kind, path
  return "", ""


SEMANTIC_PREFIXES = ("image_embedder_und", "position_embedding", "und_trans")


def load(params, init_config, abstract_params, model_config: Showo2Config):
  """`params` with every non-excluded leaf replaced by the source's value, then
  the semantic layers from a distillation run if `semantic_layers_from` is set
  (stage 1: Qwen2.5 + SigLIP weights, then the pre-distilled layers on top)."""
  params = _load_main(params, init_config, abstract_params, model_config)
  path = init_config.get("semantic_layers_from", "")
  if path:
    wanted = _filter(abstract_params, lambda k: k[0] in SEMANTIC_PREFIXES)
    flat = traverse_util.flatten_dict(params)
    flat.update(traverse_util.flatten_dict(checkpointing.restore_params(path, wanted)))
    log.info("warm start: semantic layers from %s", path)
    params = traverse_util.unflatten_dict(flat)
  return params


def _load_main(params, init_config, abstract_params, model_config):
  kind, path = source(init_config)
  if not kind:
    return params
  exclude = tuple(init_config.get("exclude", ()) or ())

  def keep(path_tuple):
    return not any(e in partition.path_name(path_tuple) for e in exclude)

  wanted = _filter(abstract_params, keep)
  if kind == "from_checkpoint":
    loaded = checkpointing.restore_params(path, wanted)
  else:
    if kind == "from_original":
      from showo2_jax.convert import showo2_torch  # pylint: disable=import-outside-toplevel
      _, host = showo2_torch.load_original(path, config=model_config)
    else:
      from showo2_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
      _, _, host = orbax_io.restore_params(path)
    host = host.get("params", host) if isinstance(host, dict) else host
    missing = set(traverse_util.flatten_dict(wanted)) - set(traverse_util.flatten_dict(host))
    if missing:
      names = sorted(partition.path_name(m) for m in missing)[:8]
      raise ValueError(f"{path} lacks {len(missing)} params the run needs, e.g. {names}; "
                       f"add their prefixes to init.exclude to keep them at random init")
    wanted_keys = set(traverse_util.flatten_dict(wanted))
    loaded = state_lib.place(_filter(host, lambda k: k in wanted_keys), wanted)
  flat = traverse_util.flatten_dict(params)
  new = traverse_util.flatten_dict(loaded)
  flat.update(new)
  log.info("warm start: %d of %d param arrays from %s %s (excluded: %s)", len(new), len(flat), kind,
           path, ", ".join(exclude) or "none")
  return traverse_util.unflatten_dict(flat)
