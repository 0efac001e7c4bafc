"""ml_collections configs: one `get_config(arg=None)` per file.

Load them with `showo2_jax.config_lib.load_config("tiny")` or on the command line
with `--config configs/tiny.py` (any file path works, so users can fork a config).
"""
