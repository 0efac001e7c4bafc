"""A GCS API on this machine that Orbax and tensorstore can use: `gcp-storage-emulator`.

A plain `gcp-storage-emulator start` is not enough for Orbax: its media downloads
leave out the `x-goog-generation` header, so tensorstore reads every object as
generation 0 and the first checkpoint save fails ("manifest.ocdbt: Malformed
StorageGeneration"). This module serves the same emulator with that header added.

From a shell (runs until Ctrl-C; port 0 picks a free port)::

  python -m showo2_jax.testing.gcs_emulator --port 9023 --bucket my-bucket
  # prints: export STORAGE_EMULATOR_HOST=http://127.0.0.1:9023
  # then, in another shell: export STORAGE_EMULATOR_HOST=...; showo2-jax train ... --workdir gs://my-bucket/run

From Python (the tests' fixture, tests/gcs_emulator.py): `start()` serves it from
a thread of this process and returns `(server, "http://HOST:PORT")`.
Needs the `gcp-storage-emulator` package (the `dev`/`test` extras).
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
import uuid

# The variables `showo2_jax.paths.configure_storage` derives from STORAGE_EMULATOR_HOST.
DERIVED_ENV = ("TENSORSTORE_GCS_HTTP_URL", "EPATH_USE_TF", "GOOGLE_CLOUD_PROJECT",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def _serve_generation_headers() -> None:
  """Media downloads answer with `x-goog-generation`, as GCS does.

  The emulator leaves the header out, so tensorstore (Orbax's array store) reads
  every object as generation 0 and then fails its conditional writes of the
  OCDBT manifest with "Malformed StorageGeneration". Applied once per process.
  """
  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator import server as emulator_server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects
  if getattr(objects.download, "_with_generation", False):
    return
  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

  download._with_generation = True  # pylint: disable=protected-access
  objects.download = download  # objects.get (alt=media) calls it by this name
  for _, handlers in emulator_server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is original:
        handlers[method] = download


def start(host: str = "127.0.0.1", port: int = 0, bucket: str | None = None):
  """Serves an in-memory emulator from a thread: (server, "http://HOST:PORT").

  Args:
    host: address to bind (127.0.0.1 keeps it on this machine).
    port: TCP port; 0 picks a free one (the URL names the one chosen).
    bucket: a bucket to create at start (others: `new_bucket`, or any GCS client).
  Stop it with `server.stop()`.
  """
  from gcp_storage_emulator.server import create_server  # pylint: disable=import-outside-toplevel
  _serve_generation_headers()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are normal traffic
  server = create_server(host, port, in_memory=True)
  server.start()
  bound_host, bound_port = server._api._httpd.server_address[:2]  # pylint: disable=protected-access
  # A client that hangs up early (a killed training run) is normal traffic here.
  server._api._httpd.handle_error = lambda request, address: None  # pylint: disable=protected-access
  if bucket:
    new_bucket(server, name=bucket)
  return server, f"http://{bound_host}:{bound_port}"


def new_bucket(server, prefix: str = "test", name: str | None = None) -> str:
  """Creates bucket `name` (default: `prefix` plus a random suffix); returns its name."""
  from gcp_storage_emulator.handlers import buckets  # pylint: disable=import-outside-toplevel
  name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
  buckets.create_bucket(name, server._storage)  # pylint: disable=protected-access
  return name


def environ(host: str) -> dict:
  """The environment a process needs to use the emulator: STORAGE_EMULATOR_HOST alone,
  with the variables derived from it removed so the project derives them itself."""
  env = {k: v for k, v in os.environ.items() if k not in DERIVED_ENV}
  env["STORAGE_EMULATOR_HOST"] = host
  return env


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m showo2_jax.testing.gcs_emulator", allow_abbrev=False,
      description="An in-memory GCS emulator that Orbax checkpoints can be saved to "
                  "(gcp-storage-emulator plus the x-goog-generation header tensorstore needs).")
  parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
  parser.add_argument("--port", type=int, default=9023, help="TCP port; 0 picks a free one")
  parser.add_argument("--bucket", action="append", default=[],
                      help="bucket to create at start (repeatable)")
  args = parser.parse_args(argv)
  try:
    server, url = start(args.host, args.port)
  except ImportError:
    print("error: the GCS emulator needs gcp-storage-emulator: pip install gcp-storage-emulator")
    return 1
  except OSError as e:
    print(f"error: cannot serve on {args.host}:{args.port}: {e.strerror or e}")
    return 1
  for name in args.bucket:
    new_bucket(server, name=name)
  print(f"export STORAGE_EMULATOR_HOST={url}", flush=True)
  print(f"GCS emulator on {url} (in memory; buckets: {', '.join(args.bucket) or 'none'}); "
        "Ctrl-C stops it", flush=True)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    pass
  finally:
    server.stop()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
