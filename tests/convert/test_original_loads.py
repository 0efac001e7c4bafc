"""`convert to-torch` writes what the original loads: its scripts call
`from_pretrained(path, use_safetensors=False)`, which reads `pytorch_model.bin` (or
its index) and nothing else, and its constructor reads `llm_model_path` and
`clip_pretrained_model_path` from config.json. The export is loaded here by
transformers' own `from_pretrained(use_safetensors=False)` machinery (file lookup,
sharded index, torch.load) into a module with the original's parameter names."""
import importlib.util
import json

import numpy as np
import pytest

from showo2_jax.convert import checkpoint_io, pipeline

# torch (the `torch` extra) and transformers are imported by the tests that run, not at
# collection: a worker that runs none of them does not pay for importing them.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (the `torch` extra)")


def _original_layout_class():
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  class OriginalLayout(transformers.PreTrainedModel):
    """Parameters named and shaped as the original's Showo2Qwen2_5 state_dict."""
    config_class = transformers.PretrainedConfig
    base_model_prefix = "showo2"

    def __init__(self, config, shapes=None):
      super().__init__(config)
      for key, shape in (shapes or {}).items():
        *path, name = key.split(".")
        module = self
        for part in path:
          if not hasattr(module, part):
            module.add_module(part, torch.nn.Module())
          module = getattr(module, part)
        module.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))
      self.post_init()

    def _init_weights(self, module):
      pass

  return OriginalLayout


@pytest.mark.parametrize("max_shard_size", [None, 200_000])
def test_transformers_loads_the_export_with_use_safetensors_false(
    showo2_fixture_dir, tmp_path, max_shard_size):
  import transformers  # pylint: disable=import-outside-toplevel
  ox, pt = tmp_path / "orbax", tmp_path / "torch"
  pipeline.to_orbax(str(showo2_fixture_dir), str(ox))
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  pipeline.to_torch(str(ox), str(pt), **kw)
  with checkpoint_io.StateDict(str(showo2_fixture_dir)) as sd:
    reference = {k: np.array(sd[k]) for k in sd.keys()}
  config = transformers.PretrainedConfig(tie_word_embeddings=False)
  model, info = _original_layout_class().from_pretrained(
      str(pt), config=config, use_safetensors=False, output_loading_info=True,
      shapes={k: v.shape for k, v in reference.items()})
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  state = model.state_dict()
  for k, v in reference.items():
    np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)


def test_config_names_what_the_original_constructor_reads(showo2_fixture_dir, tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  ox = tmp_path / "orbax"
  pipeline.to_orbax(str(showo2_fixture_dir), str(ox))
  # The fixture's width (64) has no released Qwen2.5: the LLM config is written to llm/
  # and the LLM is built from it (load_from_showo), as AutoConfig.from_pretrained reads it.
  pipeline.to_torch(str(ox), str(tmp_path / "default"))
  top = json.loads((tmp_path / "default" / "config.json").read_text())
  assert top["load_from_showo"] is True and top["clip_pretrained_model_path"]
  llm = transformers.AutoConfig.from_pretrained(top["llm_model_path"])
  assert llm.model_type == "qwen2" and llm.hidden_size == 64 and llm.vocab_size == 312
  # Paths the user gives win.
  pipeline.to_torch(str(ox), str(tmp_path / "given"), llm_model_path="/models/qwen",
                    clip_model_path="/models/siglip")
  top = json.loads((tmp_path / "given" / "config.json").read_text())
  assert (top["llm_model_path"], top["clip_pretrained_model_path"]) == ("/models/qwen", "/models/siglip")
