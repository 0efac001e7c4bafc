"""A real GCS API on 127.0.0.1 for the tests: `gcp-storage-emulator`, in memory.

`start()` serves it from a thread of the test process on a free port (port 0) and
returns the server and its `http://127.0.0.1:PORT`; child processes (training
runs, CLIs) reach it through `STORAGE_EMULATOR_HOST`, the one variable a user sets.
"""
import logging
import os
import uuid

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.server import create_server

# The variables `showo2_jax.paths.configure_storage` derives from STORAGE_EMULATOR_HOST.
DERIVED_ENV = ("TENSORSTORE_GCS_HTTP_URL", "EPATH_USE_TF", "GOOGLE_CLOUD_PROJECT",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def _serve_generation_headers() -> None:
  """Media downloads answer with `x-goog-generation`, as GCS does.

  The emulator leaves the header out, so tensorstore (Orbax's array store) reads
  every object as generation 0 and then fails its conditional writes of the
  OCDBT manifest with "Malformed StorageGeneration". Applied once per process.
  """
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


def start():
  """(server, "http://127.0.0.1:PORT"); stop with `server.stop()`."""
  _serve_generation_headers()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are normal traffic
  server = create_server("127.0.0.1", 0, in_memory=True)
  server.start()
  host, port = server._api._httpd.server_address[:2]  # pylint: disable=protected-access
  # A client that hangs up early (a killed training run) is normal traffic here.
  server._api._httpd.handle_error = lambda request, address: None  # pylint: disable=protected-access
  return server, f"http://{host}:{port}"


def new_bucket(server, prefix: str = "test") -> str:
  name = f"{prefix}-{uuid.uuid4().hex[:12]}"
  buckets.create_bucket(name, server._storage)  # pylint: disable=protected-access
  return name


def environ(host: str) -> dict:
  """The environment a process needs to use the emulator: STORAGE_EMULATOR_HOST alone,
  with the variables derived from it removed so the project derives them itself."""
  env = {k: v for k, v in os.environ.items() if k not in DERIVED_ENV}
  env["STORAGE_EMULATOR_HOST"] = host
  return env
