"""Video token pooling reproduces PyTorch's bilinear resize (inference_mmu_vid.py)."""
import numpy as np
import pytest

from showo2_jax.sample import understanding


@pytest.mark.parametrize("n_in,n_out", [(27, 14), (4, 2), (32, 16), (5, 3)])
def test_bilinear_matrix_matches_torch_interpolate(n_in, n_out):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((2, 3, n_in, n_in)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(n_out, n_out), mode="bilinear",
                                         align_corners=False).numpy()
  m = understanding.bilinear_matrix(n_in, n_out)
  got = np.einsum("oh,bchw,pw->bcop", m, x, m)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pooled_side_is_the_originals_14_at_27():
  assert understanding.pooled_side(27) == 14
  assert understanding.pooled_side(4) == 2
