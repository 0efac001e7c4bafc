"""Our forward pass against golden outputs of the original PyTorch Show-o2."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.convert.showo2_torch import load_original
from showo2_jax.models import showo2 as s2
from showo2_jax.parity.metrics import relative_error
from showo2_jax.parity.showo2 import run_showo2_parity


def test_every_fixture_case_matches(showo2_fixture_dir):
  results = run_showo2_parity(str(showo2_fixture_dir))
  names = {name for name, _, _ in results}
  assert {"logits", "loss_ntp", "loss_flow", "v_pred", "video_logits", "video_v_pred",
          "text_only_logits"} <= names
  for name, err, threshold in results:
    assert err < threshold, f"{name}: relative error {err:.3e} >= {threshold}"


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_and_remat_give_the_same_outputs(showo2_fixture_dir, remat):
  cases = np.load(showo2_fixture_dir / "cases.npz")
  config, params = load_original(str(showo2_fixture_dir), scan_layers=True, remat_policy=remat)
  assert params["showo"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == config.llm.num_layers
  out = s2.Showo2(config).apply({"params": params}, cases["text_tokens"], cases["image_latents"], cases["t"],
                                cases["modality_positions"])
  assert relative_error(out["logits"], cases["logits"]) < 1e-4
  loss = s2.flow_loss(out["v_tok"], cases["image_labels"], cases["image_masks"], cases["modality_positions"])
  assert relative_error(loss, cases["loss_flow"]) < 1e-5


@pytest.mark.slow
def test_bfloat16_compute_stays_close(showo2_fixture_dir):
  cases = np.load(showo2_fixture_dir / "cases.npz")
  config, params = load_original(str(showo2_fixture_dir))
  out = s2.Showo2(config.replace(dtype="bfloat16")).apply({"params": params}, cases["text_tokens"], cases["image_latents"], cases["t"],
                                cases["modality_positions"])
  assert out["logits"].dtype == jnp.bfloat16
  assert relative_error(np.asarray(out["logits"], np.float32), cases["logits"]) < 3e-2


@pytest.mark.slow
def test_empty_slot_quirk_is_what_the_fixture_needs(showo2_fixture_dir):
  """Row 0 has an empty (0, 0) slot: the original writes its time token over BOS."""
  cases = np.load(showo2_fixture_dir / "cases.npz")
  config, params = load_original(str(showo2_fixture_dir))
  args = (cases["text_tokens"], cases["image_latents"], cases["t"], cases["modality_positions"])
  fixed = s2.Showo2(config, empty_slots_overwrite_bos=False).apply({"params": params}, *args)
  quirk = s2.Showo2(config).apply({"params": params}, *args)
  assert relative_error(quirk["logits"][0, 0], cases["logits"][0, 0]) < 1e-4
  assert relative_error(fixed["logits"][0, 0], cases["logits"][0, 0]) > 1e-3
  # Rows without empty slots are unaffected.
  np.testing.assert_allclose(fixed["logits"][1], quirk["logits"][1], rtol=0, atol=0)


def test_unpatchify_is_the_raster_quad_layout():
  c, h, w = 3, 2, 6
  latent = np.arange(c * h * w, dtype=np.float32).reshape(1, c, h, w)
  tokens = s2.patchify_labels(jnp.asarray(latent), 4 * c)
  # Token r holds raster pixels 4r..4r+3 (channel-last inside the token).
  np.testing.assert_array_equal(np.asarray(tokens)[0, 0], latent[0].reshape(c, -1).T[:4].reshape(-1))
  np.testing.assert_array_equal(np.asarray(s2.unpatchify(tokens, c, h, w)), latent)


@pytest.mark.slow
def test_check_parity_cli_passes_on_the_fixture(showo2_fixture_dir):
  from showo2_jax.parity.showo2 import run_showo2_parity as _  # noqa: F401  (import check)
  proc = subprocess.run([sys.executable, "-m", "showo2_jax.cli.main", "check-parity", str(showo2_fixture_dir)],
                        capture_output=True, text=True, timeout=600)
  assert "logits" in proc.stdout and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_parity_cli_rejects_a_non_fixture(tmp_path):
  from showo2_jax.cli.main import main
  assert main(["check-parity", str(tmp_path)]) == 1
