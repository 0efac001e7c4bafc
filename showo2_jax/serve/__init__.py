"""OpenAI-compatible serving of Show-o2: `showo2-jax serve` (see api.py, engine.py)."""
