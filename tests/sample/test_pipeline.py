"""End-to-end inference on a tiny random model: T2I, T2V/I2V, understanding, mixed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo2_jax.config_lib import load_config
from showo2_jax.data import testing
from showo2_jax.models.config import Showo2Config
from showo2_jax.sample import mixed, pipeline

FEW_STEPS = pipeline.FlowSampling(num_steps=3, guidance_scale=3.0)


@pytest.mark.slow  # two T2I samplers and the VAE decoder; test_serve's generation compares with pipe.generate fast
def test_t2i_is_independent_of_batching(pipe):
  """Prompts of different lengths in one left-aligned batch (plus a padded last
  batch) give what each prompt gives alone."""
  prompts = ["a photo of a dog in the park", "cat", "the sky is blue"]
  batched = pipe.generate(prompts, FEW_STEPS, batch_size=2, seed=3)
  alone = pipe.generate(prompts, FEW_STEPS, batch_size=1, seed=3)
  assert batched.shape == (3, 16, 8, 8)
  np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)
  images = pipe.decode(batched)
  assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8


def test_prompt_longer_than_the_context_is_an_error(pipe):
  long = "a photo of a dog in the park, the sky is blue. " * 10
  with pytest.raises(pipeline.PromptTooLongError, match="longer than the context"):
    pipe.generate([long], FEW_STEPS)
  assert len(pipe.prompt_ids([long], truncate=True)[0]) == pipe.max_text_len


@pytest.mark.slow  # a video sampler and the VAE on video: over the ~19 CPU s of test_visual's video case
def test_text_to_video_and_image_to_video(pipe):
  rng = np.random.default_rng(0)
  image = pipe.image_pixels(testing.random_image(rng, 80, 64))
  video = pipe.generate(["a dog runs"], FEW_STEPS, num_frames=5, condition_image=image)
  assert video.shape == (1, 16, 2, 8, 8)
  cond = np.asarray(pipe.encode_pixels(image[None]))[0]
  np.testing.assert_allclose(video[0, :, 0], cond, atol=1e-6)  # the condition is never denoised
  frames = pipe.decode(video)
  assert frames.shape == (1, 5, 64, 64, 3)
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    pipe.generate(["x"], FEW_STEPS, num_frames=4)


@pytest.mark.slow  # five understanding programs: 26 CPU s measured
def test_understanding_images_and_video(pipe):
  rng = np.random.default_rng(1)
  images = [testing.random_image(rng, 70, 64), testing.random_image(rng, 64, 90)]
  questions = ["What is in the image?", "Is it a dog?"]
  batched = pipe.understand(images, questions, max_new_tokens=6, batch_size=2)
  alone = [pipe.understand([im], [q], max_new_tokens=6)[0] for im, q in zip(images, questions)]
  assert batched == alone and all(isinstance(a, str) for a in batched)
  parity = pipe.understand(images[:1], questions[:1], max_new_tokens=6, parity_mode=True)
  assert isinstance(parity[0], str)
  answer = pipe.understand_video(images + images[:1], "What happens?", max_new_tokens=4)
  assert isinstance(answer, str)
  with pytest.raises(pipeline.PromptTooLongError):
    small = pipeline.Pipeline(pipe.config, pipe.params, pipe.tokenizer, pipe.special, pipe.vae,
                              max_context=30)
    small.understand(images[:1], questions[:1], max_new_tokens=6)


@pytest.mark.slow  # text rounds and an image round; test_mixed_context_... stays fast
def test_mixed_story_generates_images_where_text_asks(pipe, monkeypatch):
  """The text model is replaced by a script that opens an image in round 0, so the
  image path runs on random weights; round 1 must then see that image."""
  sp = pipe.special
  seen = []

  def scripted_text(p, history, positions, latents, **kw):
    seen.append((list(history), [tuple(x) for x in positions], len(latents)))
    return [10, 11, sp.boi] if not latents else [12, sp.eos]

  monkeypatch.setattr(mixed, "text_round", scripted_text)
  story = mixed.generate_story(pipe, "story", rounds=2, flow=FEW_STEPS, later_guidance_scale=2.0)
  assert len(story.latents) == 1 and story.latents[0].shape == (16, 8, 8)
  prompt_len = len(seen[0][0])
  history, positions, n_images = seen[1]
  assert n_images == 1
  assert positions == [(prompt_len + 2 + 2, pipe.image_block)]  # [bos] prompt 10 11 [boi] -> time slot
  block = history[prompt_len + 2:]
  assert block[0] == sp.boi and block[-1] == sp.eoi and len(block) == pipe.image_block + 2
  assert story.token_ids[-2:] == [12, sp.eos]


def test_mixed_context_images_are_clean_t1_by_default(pipe, monkeypatch):
  """Text rounds feed earlier images with context_t (1 = training, our default; 0 =
  the original's bug); image rounds always with t = 1."""
  sp = pipe.special
  times = []
  real_context = mixed._context

  def spy(p, latents, t):
    times.append(t)
    return real_context(p, latents, t)

  monkeypatch.setattr(mixed, "_context", spy)
  latent = jnp.asarray(np.random.default_rng(2).standard_normal((16, 8, 8)), jnp.float32)
  history = [20, 21, sp.boi] + [sp.img_pad] * pipe.image_block + [sp.eoi]
  positions = [(4, pipe.image_block)]
  kw = dict(sampling=mixed.STORY_SAMPLING, max_new_tokens=4, rng=jax.random.PRNGKey(0))
  mixed.text_round(pipe, history, positions, [latent], context_t=1.0, **kw)
  mixed.text_round(pipe, history, positions, [latent], context_t=0.0, **kw)
  mixed.image_round(pipe, history + [22], positions, [latent], FEW_STEPS,
                    jnp.zeros((16, 8, 8), jnp.float32))
  assert times == [1.0, 0.0, 1.0]


def test_resolutions_follow_the_checkpoint(pipe):
  """HQ 512 generates at 512 px but understands at 432 (the 27x27 semantic grid)."""
  config = Showo2Config.from_config_dict(load_config("showo2_1p5b_hq512").model)
  hq = pipeline.Pipeline(config, None, pipe.tokenizer, pipe.special)
  assert (hq.resolution, hq.understanding_resolution) == (512, 432)
  assert (hq.image_block, hq.understanding_block, hq.max_text_len) == (1025, 730, 251)
  both = pipeline.Pipeline(config, None, pipe.tokenizer, pipe.special, resolution=1024)
  assert (both.resolution, both.understanding_resolution, both.max_text_len) == (1024, 1024, 251)
