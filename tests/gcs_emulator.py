"""The tests' GCS emulator: `showo2_jax.testing.gcs_emulator`, in memory on a free port.

`start()` serves it from a thread of the test process on a free port (port 0) and
returns the server and its `http://127.0.0.1:PORT`; child processes (training
runs, CLIs) reach it through `STORAGE_EMULATOR_HOST`, the one variable a user sets.
"""
from showo2_jax.testing.gcs_emulator import DERIVED_ENV, environ, new_bucket, start

__all__ = ["DERIVED_ENV", "environ", "new_bucket", "start"]
