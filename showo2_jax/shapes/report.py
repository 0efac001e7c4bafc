"""What a shapes run shows: samples.png, answers.txt, loss.png, metrics.json, and eval-shapes.

Evaluation (`evaluate`) uses the held-out scenes written with the world
(`world/heldout.json`): their (size, colour, shape, position) combinations
never occur in the training files.
- generation: each held-out scene's full caption is a prompt; the generated
  image's colour (and shape) by the pixel classifiers of `classify.py` must
  match the prompt's. Fractions `gen_colour`, `gen_shape`.
- understanding: each held-out scene is rendered; the model is asked "What
  colour is the shape?" and "What shape is it?"; an answer counts when it
  names the right word (and no other colour / shape). Fractions `und_colour`,
  `und_shape`.
Chance: 1/4 for colours, 1/3 for shapes.
"""
from __future__ import annotations

import json
import os
import textwrap
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from showo2_jax.shapes import classify, world

TARGETS = {"gen_colour": 0.8, "und_colour": 0.8, "und_shape": 0.8}
CHANCE = {"gen_colour": 1 / len(world.COLOURS), "gen_shape": 1 / len(world.SHAPES),
          "und_colour": 1 / len(world.COLOURS), "und_shape": 1 / len(world.SHAPES)}


def load_pipeline(run_dir: str, tokenizer: Optional[str] = None, vae: Optional[str] = None):
  """The inference Pipeline of a training workdir (or a recipe run's final phase)."""
  from showo2_jax.convert import loading  # pylint: disable=import-outside-toplevel
  from showo2_jax.sample.pipeline import Pipeline  # pylint: disable=import-outside-toplevel
  run = loading.resolve_training_run(run_dir)
  if run is None:
    raise FileNotFoundError(f"{run_dir}: not a training workdir (no config.json + checkpoints/)")
  cfg = loading.run_config(run)
  tok = tokenizer or cfg.get("tokenizer_path")
  vae_path = vae or cfg.get("vae_checkpoint")
  return Pipeline.load(run, tok, vae_path, dtype="float32", resolution=int(cfg["resolution"]),
                       max_seq_len=int(cfg["max_seq_len"])), cfg


def _flow_sampling(cfg: dict):
  from showo2_jax.sample.pipeline import FlowSampling  # pylint: disable=import-outside-toplevel
  s = cfg.get("sample", {})
  return FlowSampling(num_steps=int(s.get("num_steps", 25)),
                      guidance_scale=float(s.get("guidance_scale", 3.0)),
                      time_shifting_factor=float(s.get("time_shifting_factor", 1.0)),
                      method=str(s.get("method", "euler")))


def generate_images(pipe, cfg: dict, prompts, *, batch_size: int, seed: int = 0) -> np.ndarray:
  """uint8 (n, R, R, 3), batched at a fixed size (one compilation)."""
  latents = pipe.generate(list(prompts), _flow_sampling(cfg), seed=seed, batch_size=batch_size)
  out = []
  for i in range(0, len(latents), batch_size):
    chunk = latents[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    out.append(pipe.decode(chunk)[:n])
  return np.concatenate(out)


def names_only(answer: str, right: str, vocabulary) -> bool:
  """The answer names `right` and no other word of `vocabulary`."""
  words = set(answer.lower().replace("?", " ").replace(".", " ").replace(",", " ").split())
  return right in words and not any(v in words for v in vocabulary if v != right)


def evaluate(pipe, cfg: dict, scenes, image_size: int, *, batch_size: int = 24,
             seed: int = 0) -> tuple[dict, dict]:
  """(fractions, details) on `scenes` (see the module docstring)."""
  max_new = int(cfg.get("sample", {}).get("max_new_tokens", 8))
  prompts = [s.caption(0) for s in scenes]
  gen = generate_images(pipe, cfg, prompts, batch_size=batch_size, seed=seed)
  gen_colour = [classify.colour_of(im) for im in gen]
  gen_shape = [classify.shape_of(im) for im in gen]
  images = [world.render(s, image_size) for s in scenes]
  qs_colour = [world.QUESTIONS["colour"]] * len(scenes)
  qs_shape = [world.QUESTIONS["shape"]] * len(scenes)
  ans_colour = pipe.understand(images, qs_colour, max_new_tokens=max_new, batch_size=batch_size,
                               seed=seed)
  ans_shape = pipe.understand(images, qs_shape, max_new_tokens=max_new, batch_size=batch_size,
                              seed=seed)
  n = len(scenes)
  fr = {
      "gen_colour": sum(c == s.colour for c, s in zip(gen_colour, scenes)) / n,
      "gen_shape": sum(c == s.shape for c, s in zip(gen_shape, scenes)) / n,
      "und_colour": sum(names_only(a, s.colour, world.COLOURS) for a, s in zip(ans_colour, scenes)) / n,
      "und_shape": sum(names_only(a, s.shape, world.SHAPES) for a, s in zip(ans_shape, scenes)) / n,
  }
  details = {"prompts": prompts, "gen_images": gen, "gen_colour": gen_colour,
             "gen_shape": gen_shape, "images": images, "ans_colour": ans_colour,
             "ans_shape": ans_shape, "scenes": scenes}
  return fr, details


def _label_grid(images, labels, path: str, *, columns: int, scale: int = 4) -> None:
  """Images (uint8 HWC) upscaled `scale`x (nearest), each with its label below."""
  h, w = images[0].shape[:2]
  cell_w, text_h = w * scale, 34
  rows = -(-len(images) // columns)
  sheet = Image.new("RGB", (columns * (cell_w + 8) + 8, rows * (h * scale + text_h + 8) + 8), "white")
  draw = ImageDraw.Draw(sheet)
  for k, (im, label) in enumerate(zip(images, labels)):
    r, c = divmod(k, columns)
    x, y = 8 + c * (cell_w + 8), 8 + r * (h * scale + text_h + 8)
    sheet.paste(Image.fromarray(im).resize((cell_w, h * scale), Image.Resampling.NEAREST), (x, y))
    for j, line in enumerate(textwrap.wrap(label, width=max(cell_w // 6, 8))[:3]):
      draw.text((x, y + h * scale + 2 + 10 * j), line, fill=(0, 0, 0))
  sheet.save(path, optimize=True)


def plot_losses(phase_dirs: dict, path: str) -> None:
  """One panel per phase, every logged loss of its metrics.jsonl against the step."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [(name, d) for name, d in phase_dirs.items()
            if os.path.exists(os.path.join(d, "metrics.jsonl"))]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.2),
                           squeeze=False)
  for ax, (name, d) in zip(axes[0], panels):
    series = {}
    with open(os.path.join(d, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        for k, v in row.items():
          if k.endswith("loss") and k != "loss":
            series.setdefault(k, {})[row["step"]] = v
    for k, pts in sorted(series.items()):
      steps = sorted(pts)
      ax.plot(steps, [pts[s] for s in steps], label=k)
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_report(config, paths, state) -> dict:
  """samples.png, answers.txt, loss.png, metrics.json in the run's workdir."""
  r = config.recipe.report
  pipe, cfg = load_pipeline(paths.root)
  scenes, size = world.read_heldout(os.path.join(paths.world, "heldout.json"))
  scenes = scenes[:int(r.num_eval)]
  batch = 24
  fractions, det = evaluate(pipe, cfg, scenes, size, batch_size=batch)
  # samples.png: the first 24 held-out prompts, as generated for the evaluation.
  k = min(batch, len(scenes))
  labels = [f"{p} -> {c or '?'} {s or '?'}" for p, c, s in
            zip(det["prompts"][:k], det["gen_colour"][:k], det["gen_shape"][:k])]
  _label_grid(list(det["gen_images"][:k]), labels, os.path.join(paths.root, "samples.png"),
              columns=6)
  lines = ["Questions about held-out images (their combinations were never trained on).",
           "Format: image (true scene): question -> model's answer [ok|WRONG]", ""]
  for i, s in enumerate(det["scenes"]):
    for q, a, right, vocab in ((world.QUESTIONS["colour"], det["ans_colour"][i], s.colour,
                                world.COLOURS),
                               (world.QUESTIONS["shape"], det["ans_shape"][i], s.shape,
                                world.SHAPES)):
      ok = "ok" if names_only(a, right, vocab) else "WRONG"
      lines.append(f"heldout {i:02d} ({s.caption(0)}): {q} -> {a!r} [{ok}]")
  with open(os.path.join(paths.root, "answers.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  shown = list(det["images"][:min(len(scenes), 24)])
  shown += [np.zeros_like(shown[0])] * (-len(shown) % 8)   # a last row of 8, blank-filled
  Image.fromarray(np.concatenate([np.concatenate(shown[i:i + 8], axis=1)
                                  for i in range(0, len(shown), 8)], axis=0)).save(
                                      os.path.join(paths.root, "answers_images.png"))
  plot_losses({"vae": paths.vae, "stage1": paths.stage1, "stage2": paths.stage2},
              os.path.join(paths.root, "loss.png"))
  metrics = {
      "eval": fractions, "targets": TARGETS, "chance": CHANCE, "num_eval": len(scenes),
      "phases": {name: {k: v for k, v in out.items() if k in ("seconds", "final", "step",
                                                              "peak_rss_mb")}
                 for name, out in state["phases"].items()},
  }
  with open(os.path.join(paths.root, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  return {"eval": fractions}
