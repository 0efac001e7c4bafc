"""A procedural shapes world: images, captions, questions and clips, from a seed.

What `showo2-jax train --config tiny_shapes` learns, with nothing downloaded.
Every image is one shape (circle, square or triangle) in one of four colours,
small or large, on the left, in the center or on the right of a plain grey
background, with a little jitter. A scene is fully described by its labels, so
captions ("a small red circle on the left") and answers ("red", "circle") are
exact, and a pixel classifier (`classify.py`) can check generated images.

Everything is a function of (seed, index): `scene(seed, i)` always gives the
same labels and `render(scene, size)` the same pixels, on every machine.

`write_world(root, ...)` writes the files a real run reads, in the formats of
docs/data.md:
  images/NNNNNN.png      RGB PNGs
  t2i.jsonl              {"path", "prompt"}        (generation, stage 1 and 2)
  captions.jsonl         {"path", "prompt"}        (captioning of the question images, stage 1)
  images/qNNNNNN.png     the question images (any combination, see below)
  llava.json             LLaVA conversations       (questions and answers, stage 2)
  videos/NNNNNN.gif      short clips of a shape moving left to right
  video.jsonl            {"path", "prompt"}        (video paths)
  heldout.json           the held-out scenes eval-shapes uses (never in the files above)
  heldout/NNN.png        their images, to try `understand` on (eval-shapes renders its own)
Held-out: every combination (size, colour, shape, position) listed by
`heldout_combos` is left out of the generation file, and its full caption out of
every file, so the evaluation's prompts are unseen as a whole, while each word is
seen in other combinations. The understanding images (captions.jsonl, llava.json)
are drawn from every combination (a held-out one captioned only "a red circle"):
with a combination held out, the training images of its (size, colour, position)
would show only the other two shapes, and a model can answer the shape question
from colour, size and position alone (it did: below chance on held-out images).
The evaluation's images are new renders in any case (their own random stream).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Named colours (RGB). Saturated and far apart in hue, so `classify.colour_of`
# separates them with a nearest-hue rule.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "center", "right")
SIZES = ("small", "large")
# Plain backgrounds: neutral greys (zero saturation, so never mistaken for a colour).
BACKGROUNDS = (60, 128, 200)

POSITION_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "position": "Where is the shape?",
}

# The kinds of question llava.json asks, in turn (shape is the hardest to read
# at 8x8 latents, so it gets half of them).
QUESTION_CYCLE = ("colour", "shape", "position", "shape")


@dataclasses.dataclass(frozen=True)
class Scene:
  """One image's labels plus its jitter (fractions of the image size)."""
  colour: str
  shape: str
  position: str
  size: str
  background: int          # grey level 0..255
  dx: float                # centre jitter, fraction of the image width
  dy: float
  phrasing: int            # which caption form (0: full, 1: no size, 2: colour + shape)

  @property
  def combo(self) -> tuple[str, str, str, str]:
    return (self.size, self.colour, self.shape, self.position)

  def caption(self, phrasing: int | None = None) -> str:
    p = self.phrasing if phrasing is None else phrasing
    if p == 0:
      return f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASE[self.position]}"
    if p == 1:
      return f"a {self.colour} {self.shape} {POSITION_PHRASE[self.position]}"
    return f"a {self.colour} {self.shape}"

  def answer(self, kind: str) -> str:
    if kind == "colour":
      return self.colour
    if kind == "shape":
      return self.shape
    if kind == "position":
      return POSITION_PHRASE[self.position]
    raise ValueError(f"unknown question kind '{kind}'; choose from {sorted(QUESTIONS)}")


def all_combos() -> list[tuple[str, str, str, str]]:
  return list(itertools.product(SIZES, COLOURS, SHAPES, POSITIONS))


def heldout_combos() -> list[tuple[str, str, str, str]]:
  """One combination per (colour, shape): 12 of the 72, never in a generation or
  captioning file.

  The position and size cycle so that every position and size is held out
  somewhere, each shape at every position (so position does not tell the
  held-out shapes apart), and every (colour, shape) still appears in training
  at the other 5 (size, position) pairs.
  """
  out = []
  for k, (colour, shape) in enumerate(itertools.product(COLOURS, SHAPES)):
    out.append((SIZES[k % 2], colour, shape, POSITIONS[(k + k // 3) % 3]))
  return out


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(stream), int(index)])


def random_scene(rng: np.random.Generator, combos: Sequence[tuple[str, str, str, str]]) -> Scene:
  size, colour, shape, position = combos[int(rng.integers(len(combos)))]
  return Scene(colour=colour, shape=shape, position=position, size=size,
               background=int(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]),
               dx=float(rng.uniform(-0.02, 0.02)), dy=float(rng.uniform(-0.06, 0.06)),
               phrasing=int(rng.choice(3, p=(0.5, 0.25, 0.25))))


TRAIN, HELDOUT, QUESTION = 0, 1, 2


def scene(seed: int, index: int, split: int = TRAIN) -> Scene:
  """Scene `index` of a split (TRAIN: every combination but the held-out ones;
  HELDOUT: only those; QUESTION: any combination). Deterministic in
  (seed, index, split); each split has its own random stream."""
  held = heldout_combos()
  if split == HELDOUT:
    combos = held
  elif split == QUESTION:
    combos = all_combos()
  else:
    combos = [c for c in all_combos() if c not in held]
  return random_scene(_rng(seed, index, split), combos)


def geometry(s: Scene, size: int, shift: float = 0.0) -> tuple[float, float, float]:
  """(centre x, centre y, radius) in pixels; `shift` moves the centre right (clips).

  Radius 0.18 / 0.25 of the width (5.8 / 8 px at 32 px), centres at 0.29 / 0.5 /
  0.71 (+-0.02 jitter, so the centroid stays in its third): as large as fits (a
  large triangle on the left reaches the edge). Was 0.16 / 0.23 with a square of
  half-side 0.85 r, centres at 0.28 / 0.72 +-0.03: a circle and a square then differed in only 15-32 pixels at 32 px (0.6-2
  latent pixels), and understanding confused the two (docs/shapes.md)."""
  cx = {"left": 0.29, "center": 0.5, "right": 0.71}[s.position] + s.dx + shift
  cy = 0.5 + s.dy
  radius = {"small": 0.18, "large": 0.25}[s.size]
  return cx * size, cy * size, radius * size


def render(s: Scene, size: int, shift: float = 0.0, supersample: int = 4) -> np.ndarray:
  """(size, size, 3) uint8 RGB. Drawn at `supersample` x and box-filtered down,
  so edges are anti-aliased and the pixels do not depend on PIL's rasteriser
  rounding at the target size."""
  big = size * supersample
  img = Image.new("RGB", (big, big), (s.background,) * 3)
  draw = ImageDraw.Draw(img)
  cx, cy, r = (v * supersample for v in geometry(s, size, shift))
  fill = COLOURS[s.colour]
  if s.shape == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
  elif s.shape == "square":
    h = r          # the circle's bounding square (corners: 21% of its area outside the circle)
    draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
  elif s.shape == "triangle":
    h = r * 1.1    # upward triangle with base 2h and height 2h
    draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
  else:
    raise ValueError(f"unknown shape '{s.shape}'")
  return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def render_clip(s: Scene, size: int, num_frames: int = 5, travel: float = 0.1) -> np.ndarray:
  """(num_frames, size, size, 3) uint8: the shape moving right by `travel` of the width."""
  shifts = np.linspace(-travel / 2, travel / 2, num_frames)
  return np.stack([render(s, size, float(d)) for d in shifts])


def questions(s: Scene) -> list[tuple[str, str, str]]:
  """(kind, question, answer) for every question about `s`."""
  return [(k, q, s.answer(k)) for k, q in QUESTIONS.items()]


def corpus() -> Iterator[str]:
  """Every sentence the world can say (captions, questions, answers): what the
  tokenizer is trained on."""
  for size, colour, shape, position in all_combos():
    s = Scene(colour, shape, position, size, 128, 0.0, 0.0, 0)
    for p in range(3):
      yield s.caption(p)
      yield s.caption(p) + " moving to the right"
    for _, q, a in questions(s):
      yield q
      yield a


@dataclasses.dataclass
class WorldFiles:
  root: str
  t2i: str
  captions: str
  llava: str
  video: str
  heldout: str
  num_images: int
  num_clips: int


def write_world(root: str, *, num_images: int, num_clips: int, image_size: int, seed: int,
                num_heldout: int = 64) -> WorldFiles:
  """Writes the world's training files under `root` (see the module docstring).

  Image i has scene `scene(seed, i)`; question image i (`images/qNNNNNN.png`)
  has `scene(seed, i, QUESTION)`. LLaVA samples ask one question per image
  (in turn `QUESTION_CYCLE`: half ask the shape, the hardest to read) as the
  original's LLaVA data: `"<image>\\n" + question`, answer from gpt.
  Rewriting an existing world with the same arguments gives the same files.
  """
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  t2i, caps, llava = [], [], []
  held = set(heldout_combos())
  for i in range(num_images):
    s = scene(seed, i)
    rel = f"images/{i:06d}.png"
    Image.fromarray(render(s, image_size)).save(os.path.join(root, rel))
    t2i.append({"path": rel, "prompt": s.caption()})
    s = scene(seed, i, QUESTION)
    rel = f"images/q{i:06d}.png"
    Image.fromarray(render(s, image_size)).save(os.path.join(root, rel))
    caps.append({"path": rel, "prompt": s.caption(2 if s.combo in held else 0)})
    kind = QUESTION_CYCLE[i % len(QUESTION_CYCLE)]
    llava.append({"id": f"{i:06d}", "image": rel, "conversations": [
        {"from": "human", "value": "<image>\n" + QUESTIONS[kind]},
        {"from": "gpt", "value": s.answer(kind)}]})
  clips = []
  for i in range(num_clips):
    s = scene(seed + 1, i)
    rel = f"videos/{i:06d}.gif"
    frames = [Image.fromarray(f) for f in render_clip(s, image_size)]
    frames[0].save(os.path.join(root, rel), save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    clips.append({"path": rel, "prompt": s.caption(1) + " moving to the right"})
  files = WorldFiles(root=root, t2i=os.path.join(root, "t2i.jsonl"),
                     captions=os.path.join(root, "captions.jsonl"),
                     llava=os.path.join(root, "llava.json"), video=os.path.join(root, "video.jsonl"),
                     heldout=os.path.join(root, "heldout.json"),
                     num_images=num_images, num_clips=num_clips)
  _write_jsonl(files.t2i, t2i)
  _write_jsonl(files.captions, caps)
  _write_jsonl(files.video, clips)
  with open(files.llava, "w", encoding="utf-8") as f:
    json.dump(llava, f)
  held, held_images = [], []
  os.makedirs(os.path.join(root, "heldout"), exist_ok=True)
  for i in range(num_heldout):
    s = scene(seed, i, HELDOUT)
    rel = f"heldout/{i:03d}.png"
    Image.fromarray(render(s, image_size)).save(os.path.join(root, rel))
    held.append(dataclasses.asdict(s))
    held_images.append(rel)
  with open(files.heldout, "w", encoding="utf-8") as f:
    json.dump({"seed": seed, "image_size": image_size, "scenes": held, "images": held_images}, f,
              indent=1)
  return files


def _write_jsonl(path: str, rows) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


def read_heldout(path: str) -> tuple[list[Scene], int]:
  """(held-out scenes, image size) written by `write_world`."""
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  return [Scene(**s) for s in d["scenes"]], int(d["image_size"])
