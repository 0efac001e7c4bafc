"""A TFDS builder: a local annotation file plus its media -> ArrayRecord shards.

Why: millions of small image files are slow to open on network filesystems;
ArrayRecord shards give random access (for Grain's global shuffle) from few
large files. One example stores the media file's bytes untouched (so the
same colour-mode handling and resampling run at training time) plus the rest
of the record as JSON; reading it back gives the same record a folder source
gives, with "image_bytes" instead of a path, and the same tasks consume it.

Supported annotations: image-text JSONL ({"path", "prompt"}) and LLaVA JSON
({"conversations", "image"?}). VIST stories (several images) are not.

    build_array_record_dataset("data/t2i.jsonl", "/tmp/tfds")   # once
    records = tfds_source("/tmp/tfds")                          # grain.MapDataset
"""
from __future__ import annotations

import json
import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from showo2_jax import paths
from showo2_jax.data import sources

NAME = "showo2_records"
_MEDIA_KEYS = ("path", "image")  # the record key holding the media path, by format


class Showo2Records(tfds.core.GeneratorBasedBuilder):
  """Records of one annotation file; name `showo2_records`."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "media bytes + record JSON"}

  # tfds looks for a checksums file next to a builder's code through the
  # `importlib_resources` package, which it does not declare as a dependency on
  # Python >= 3.9; this builder downloads nothing, so there is nothing to find.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, annotation_path: str | None = None, media_root: str | None = None,
               **kwargs):
    self._annotation_path = annotation_path
    self._media_root = media_root
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "media": tfds.features.Tensor(shape=(), dtype=np.object_),  # raw file bytes, b"" if none
        "record_json": tfds.features.Text(),  # the record without its media path
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._annotation_path:
      raise ValueError("building needs annotation_path")
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    path = self._annotation_path
    if path.endswith(".jsonl"):
      records = sources.read_jsonl(path, ("path", "prompt"))
    else:
      records = sources.read_json_list(path, ("conversations",))
    root = self._media_root or paths.parent(path)
    for i, record in enumerate(records):
      if sources.is_bad(record):  # logged and counted by read_*; not written
        continue
      record = dict(record)
      media = b""
      for key in _MEDIA_KEYS:
        if key in record:
          media = paths.read_bytes(paths.join(root, record.pop(key)))
      yield i, {"media": media, "record_json": json.dumps(record)}


def build_array_record_dataset(annotation_path: str, data_dir: str, *, media_root: str | None = None,
                               num_shards: int | None = None) -> str:
  """Prepares the dataset under `data_dir` (ArrayRecord files); returns data_dir."""
  builder = Showo2Records(annotation_path=os.fspath(annotation_path), media_root=media_root,
                          data_dir=os.fspath(data_dir), file_format="array_record")
  config = tfds.download.DownloadConfig(num_shards=num_shards) if num_shards else None
  builder.download_and_prepare(download_config=config)
  return os.fspath(data_dir)


def tfds_source(data_dir: str, split: str = "train") -> grain.MapDataset:
  """Reads a built dataset back with `tfds.data_source`, as records for the tasks."""
  if not paths.isdir(paths.join(data_dir, NAME)):
    raise FileNotFoundError(f"no {NAME} dataset under {data_dir!r} "
                            "(build it with build_array_record_dataset)")
  source = tfds.data_source(NAME, split=split, data_dir=os.fspath(data_dir), download=False)
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise sources.EmptyDatasetError(f"{data_dir}: split {split!r} is empty")
  return grain.MapDataset.source(source).map(_to_record)


def _to_record(example: dict) -> dict:
  record_json = example["record_json"]
  record = json.loads(record_json.decode() if isinstance(record_json, bytes) else record_json)
  if example["media"]:
    record["image_bytes"] = bytes(example["media"])
  return record
