"""Stage-1 data as a Python data file, with mixing weights instead of row counts.

`showo2-jax train --config stage1_1p5b --data configs/data/stage1_weights.py`.
`get_config()` returns a data block (configs/data.py); the weights 3:1 split
the 64 rows per host (8 devices x 8 rows) into 48 t2i + 16 captioning rows.
"""


def get_config(arg=None):
  del arg
  return {
      "rows_per_batch": 64,
      "streams": {
          "t2i": {"task": "t2i", "path": "/data/t2i/*.jsonl", "weight": 3, "min_res": (256, 256)},
          "mmu": {"task": "captioning", "path": "/data/captions/*.jsonl", "weight": 1,
                  "min_res": (256, 256)},
      },
  }
