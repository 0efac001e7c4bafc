"""Our cached loops reproduce the original's sampling loops (shared fixture)."""
import pytest

from showo2_jax.parity.sampling import run_sampling_parity


@pytest.mark.slow
def test_cached_paths_match_sampling_npz(showo2_fixture_dir):
  results = run_sampling_parity(showo2_fixture_dir)
  names = [name for name, _, _ in results]
  assert any(n.startswith("t2i_final_latents") for n in names)
  assert any(n.startswith("und_greedy_tokens") for n in names)
  assert any(n.startswith("und_full_logits") for n in names)
  for name, err, threshold in results:
    assert err < threshold, (name, err)


def test_directory_without_sampling_npz_gives_no_checks(tmp_path):
  assert run_sampling_parity(tmp_path) == []
