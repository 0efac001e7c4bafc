"""Stand-ins for real data in tests: a tiny Qwen-like tokenizer and tiny datasets.

Any test in the project can use these instead of the real Qwen2.5 tokenizer
(not available offline) or real image datasets:

    tok, special = tokenizer.load_tokenizer(testing.build_test_tokenizer(tmp_path))

The test tokenizer has Qwen2.5's 22 added tokens, in Qwen's order, after a
278-entry byte-level BPE vocabulary, so ids differ from Qwen's but every layout
built from ids looked up by string is the same. It is deterministic: the same
corpus and trainer settings give the same vocabulary on every run.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

# Qwen2.5's added tokens, in id order (151643..151664); the first 14 are special.
QWEN_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")
NUM_QWEN_SPECIAL = 14
BPE_VOCAB_SIZE = 278  # 256 byte symbols + 22 merges; with the added tokens: 300 ids

_CORPUS = (
    "system\nYou are a helpful assistant.",
    "\nuser\nWhat is in the image?\nassistant\n",
    "The image features a cat sitting on the table.",
    "a photo of a dog in the park, the sky is blue.",
    "Mixed-modality generation (VIST).",
)


def build_test_tokenizer(tmp_dir: str | os.PathLike) -> str:
  """Writes a tiny Qwen2.5-like tokenizer to `tmp_dir`; returns the dir.

  Like the real Qwen2.5-Instruct dir: eos '<|im_end|>', pad '<|endoftext|>',
  no bos token, Show-o2 tokens not yet added.
  """
  # Imported here: only tests need the training side of `tokenizers`.
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  import transformers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=BPE_VOCAB_SIZE, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(_CORPUS) * 4, trainer)
  tok.add_special_tokens(list(QWEN_ADDED_TOKENS[:NUM_QWEN_SPECIAL]))
  tok.add_tokens(list(QWEN_ADDED_TOKENS[NUM_QWEN_SPECIAL:]))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      model_max_length=1 << 20)
  out = os.fspath(tmp_dir)
  os.makedirs(out, exist_ok=True)
  fast.save_pretrained(out)
  return out


def random_image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB"):
  """A PIL image of noise (so resampling bugs show up), converted to `mode`."""
  arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  return Image.fromarray(arr).convert(mode)


def write_image_text_dataset(root: str | os.PathLike, num: int, *, size=(80, 64),
                             seed: int = 0, name: str = "data.jsonl") -> str:
  """Writes `num` PNGs and a JSONL of {"path", "prompt"}; returns the JSONL path.

  Paths are relative to `root` (the JSONL's folder), captions are distinct.
  """
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(num):
    rel = os.path.join("images", f"{i:05d}.png")
    random_image(rng, *size).save(os.path.join(root, rel))
    lines.append({"path": rel, "prompt": f"The image features a cat number {i}.\n"})
  path = os.path.join(root, name)
  with open(path, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return path


def write_llava_dataset(root: str | os.PathLike, num: int, *, size=(80, 64), seed: int = 0,
                        name: str = "llava.json") -> str:
  """Writes LLaVA-style conversations (one image each, every third text-only)."""
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  samples = []
  for i in range(num):
    convs = [{"from": "human", "value": f"What is in picture {i}?\n<image>"},
             {"from": "gpt", "value": f"A cat, number {i}."},
             {"from": "human", "value": "Is it a dog?"},
             {"from": "gpt", "value": "No."}]
    sample = {"id": str(i), "conversations": convs}
    if i % 3 != 2:
      rel = os.path.join("images", f"llava_{i:05d}.png")
      random_image(rng, *size).save(os.path.join(root, rel))
      sample["image"] = rel
    else:
      convs[0]["value"] = f"Tell me about number {i}."
    samples.append(sample)
  path = os.path.join(root, name)
  with open(path, "w") as f:
    json.dump(samples, f)
  return path


def write_vist_dataset(root: str | os.PathLike, num: int, *, images_per_story=(5, 2),
                       size=(80, 64), seed: int = 0, name: str = "vist.json") -> str:
  """Writes VIST-style stories; paths without '.jpg' as in the original data."""
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  stories = []
  for i in range(num):
    n = images_per_story[i % len(images_per_story)]
    paths, caps = [], []
    for j in range(n):
      rel = os.path.join("images", f"vist_{i:04d}_{j}")
      random_image(rng, *size).convert("RGB").save(os.path.join(root, rel + ".jpg"))
      paths.append(rel)
      caps.append(f"story {i} part {j}: the dog runs.")
    stories.append({"images": paths, "captions": caps})
  path = os.path.join(root, name)
  with open(path, "w") as f:
    json.dump(stories, f)
  return path


def write_video_dataset(root: str | os.PathLike, num: int, *, num_frames: int = 6,
                        size=(48, 40), seed: int = 0, name: str = "videos.jsonl",
                        ext: str = "gif") -> str:
  """Writes `num` tiny noise clips and a JSONL of {"path", "prompt"}; returns its path.

  `ext` "gif" (Pillow, always available) or "mp4" (H.264 through imageio-ffmpeg,
  an install requirement, as `sample.media.save_video` writes it; lossy, so the
  frames read back differ slightly from those written).
  """
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  from showo2_jax.data import media  # pylint: disable=import-outside-toplevel
  if ext not in ("gif", "mp4"):
    raise ValueError(f"ext must be 'gif' or 'mp4', got {ext!r}")
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(num):
    frames = rng.integers(0, 256, size=(num_frames, size[1], size[0], 3), dtype=np.uint8)
    rel = os.path.join("videos", f"{i:04d}.{ext}")
    if ext == "gif":
      iio.imwrite(os.path.join(root, rel), frames, loop=0)
    else:
      with media.ffmpeg_subprocess():
        iio.imwrite(os.path.join(root, rel), frames, plugin="FFMPEG", fps=8)
    lines.append({"path": rel, "prompt": f"a video of a dog number {i}"})
  path = os.path.join(root, name)
  with open(path, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return path
