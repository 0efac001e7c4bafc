"""Wan2.1 3D causal VAE: `wan` (model, encode/decode), `loading` (checkpoints), `tiling`.

See docs/vae.md.
"""
