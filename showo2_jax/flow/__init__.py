"""Flow-matching math shared by training and sampling: `transport` (the interpolation
path, the time shift, the loss targets and the ODE/SDE samplers, as pure JAX functions).

Imports nothing of showo2_jax; train/ and sample/ both build on it (docs/architecture.md).
"""
