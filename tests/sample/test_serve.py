"""`showo2-jax serve` on a tiny random model, through the official `openai` client.

The server runs in this process (uvicorn on a background thread) on 127.0.0.1
with a port the OS picks; a module fixture starts it and stops it.
"""
import base64
import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

from showo2_jax.data import testing
from showo2_jax.sample import pipeline
from showo2_jax.serve import api, engine as engine_lib

STEPS = 3


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("media")
  rng = np.random.default_rng(0)
  for i in range(2):
    testing.random_image(rng, 70 + 10 * i, 64).save(d / f"im{i}.png")
  return d


@pytest.fixture(scope="module")
def server(pipe, media_dir):
  eng = engine_lib.Engine(pipe, max_batch=4, window_s=0.05, max_new_tokens=64).start()
  srv = api.Server(eng, model_name="show-o2-tiny", allowed_local_media_paths=[str(media_dir)],
                   default_max_tokens=8, flow=pipeline.FlowSampling(num_steps=STEPS))
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  userver = uvicorn.Server(uvicorn.Config(api.create_app(srv), log_level="warning"))
  thread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 60
  while not userver.started:
    assert time.monotonic() < deadline, "server did not start"
    time.sleep(0.05)
  yield srv, f"http://127.0.0.1:{port}"
  userver.should_exit = True
  thread.join(timeout=30)
  eng.stop()
  sock.close()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=600)


def data_uri(path) -> str:
  return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def two_image_message(media_dir, question="Are these the same?"):
  return [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": data_uri(media_dir / "im0.png")}},
      {"type": "image_url", "image_url": {"url": str(media_dir / "im1.png")}},  # a local path
      {"type": "text", "text": question}]}]


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_chat_with_two_images_matches_the_pipeline(server, client, pipe, media_dir):
  r = client.chat.completions.create(model="show-o2-tiny", messages=two_image_message(media_dir),
                                     max_tokens=6)
  images = [Image.open(media_dir / f"im{i}.png").convert("RGB") for i in range(2)]
  expected = pipe.understand([images], ["Are these the same?"], max_new_tokens=6)[0]
  assert r.choices[0].message.content == expected
  assert r.choices[0].finish_reason in ("stop", "length")
  assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 2 * pipe.understanding_block
  # The same question about one image is a different prompt (one visual block).
  one = client.chat.completions.create(model="x", max_tokens=6, messages=[{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": data_uri(media_dir / "im0.png")}},
      {"type": "text", "text": "Are these the same?"}]}])
  assert one.choices[0].message.content == pipe.understand(images[:1], ["Are these the same?"],
                                                           max_new_tokens=6)[0]
  assert one.usage.prompt_tokens == r.usage.prompt_tokens - pipe.understanding_block - 3


def test_streaming_equals_the_full_answer(client, media_dir):
  full = client.chat.completions.create(model="x", messages=two_image_message(media_dir),
                                        max_tokens=8)
  stream = client.chat.completions.create(model="x", messages=two_image_message(media_dir),
                                          max_tokens=8, stream=True)
  chunks = list(stream)
  text = "".join(c.choices[0].delta.content or "" for c in chunks)
  assert text == full.choices[0].message.content
  assert chunks[0].choices[0].delta.role == "assistant"
  assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
  assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_strings_and_max_tokens(client):
  msgs = [{"role": "user", "content": "Tell me a story."}]
  base = client.chat.completions.create(model="x", messages=msgs, max_tokens=12)
  text = base.choices[0].message.content
  one = client.chat.completions.create(model="x", messages=msgs, max_tokens=1)
  assert one.choices[0].finish_reason in ("length", "stop") and one.usage.completion_tokens == 1
  if len(text) >= 3:
    stop = text[1:3]
    cut = client.chat.completions.create(model="x", messages=msgs, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_image_generation_is_seeded_and_sized(server, client, pipe):
  srv, _ = server
  size = srv.sizes[0]
  r = client.images.generate(model="x", prompt="a red square", n=2, size=size,
                             response_format="b64_json", extra_body={"seed": 5})
  images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in r.data]
  assert len(images) == 2 and images[0].shape == (pipe.resolution, pipe.resolution, 3)
  again = client.images.generate(model="x", prompt="a red square", n=1, size=size,
                                 extra_body={"seed": 5})
  first = np.asarray(Image.open(io.BytesIO(base64.b64decode(again.data[0].b64_json))))
  np.testing.assert_array_equal(first, images[0])  # same seed, other batch: same image
  latents = pipe.generate(["a red square"], pipeline.FlowSampling(num_steps=STEPS), seed=0)
  assert latents.shape[0] == 1


@pytest.mark.slow  # its own editing programs (VAE encode + sampler); generation stays fast
def test_image_edit_endpoint(server, client, media_dir, pipe):
  with open(media_dir / "im0.png", "rb") as f:
    r = client.images.edit(model="x", image=f, prompt="make it red", n=1,
                           extra_body={"seed": 1, "num_inference_steps": STEPS})
  image = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))))
  assert image.shape == (pipe.resolution, pipe.resolution, 3)


def test_bad_requests_are_openai_400s(server, client):
  _, base = server
  cases = [
      ({"messages": []}, "messages"),
      ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
      ({"messages": [{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
       "not a readable image"),
      ({"messages": [{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, "outside"),
      ({"messages": [{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, "remote"),
      ({"messages": [{"role": "assistant", "content": "hi"}]}, "user message"),
      ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "max_tokens"),
      ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n=1"),
  ]
  for body, needle in cases:
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, (body, r.text)
    err = r.json()["error"]
    assert needle in err["message"] + str(err["param"]), (needle, err)
    assert err["type"] == "invalid_request_error" and "Traceback" not in r.text
  r = httpx.post(base + "/v1/chat/completions", content=b"{not json", timeout=60,
                 headers={"Content-Type": "application/json"})
  err = r.json()["error"]
  assert r.status_code == 400 and err["param"] is None, r.text
  assert err["message"].startswith("request body is not valid JSON: "), err
  for body, needle in [({"prompt": "x", "size": "3x3"}, "size"),
                       ({"prompt": "x", "response_format": "url"}, "b64_json"),
                       ({"prompt": "x", "n": 99}, "n="),
                       ({"prompt": ""}, "prompt")]:
    r = httpx.post(base + "/v1/images/generations", json=body, timeout=60)
    assert r.status_code == 400 and needle in json.dumps(r.json()["error"]), (body, r.text)
  with pytest.raises(openai.BadRequestError):
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], n=3)


def test_an_over_long_message_is_a_context_length_400_not_a_silent_cut(server, client, pipe):
  """Like `understand` without --truncate: a user message over the 512 tokens the
  prompt layout keeps is refused (OpenAI's context_length_exceeded), never cut."""
  _, base = server
  long = "word " * 2000  # ~10,000 tokens of the test tokenizer
  r = httpx.post(base + "/v1/chat/completions", timeout=60,
                 json={"messages": [{"role": "user", "content": long}], "max_tokens": 2})
  assert r.status_code == 400, r.text
  err = r.json()["error"]
  assert err["code"] == "context_length_exceeded" and err["param"] == "messages", err
  assert "maximum context length is 512 tokens" in err["message"], err
  with pytest.raises(openai.BadRequestError) as e:
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": long}])
  assert e.value.code == "context_length_exceeded"
  ok = httpx.post(base + "/v1/chat/completions", timeout=600,
                  json={"messages": [{"role": "user", "content": "word " * 50}],
                        "max_tokens": 2})
  assert ok.status_code == 200, ok.text


def test_models_and_health(server, client, pipe):
  assert [m.id for m in client.models.list().data] == ["show-o2-tiny"]
  model = httpx.get(server[1] + "/v1/models", timeout=30).json()["data"][0]
  assert model["max_context"] == pipe.max_context and model["max_message_tokens"] == 512
  assert model["max_seq_len"] == pipe.max_seq_len == 50
  assert model["max_image_prompt_tokens"] == pipe.max_text_len
  assert httpx.get(server[1] + "/health", timeout=30).json()["status"] == "ok"


@pytest.mark.slow
def test_bounded_load(server, media_dir):
  """32 concurrent mixed requests (text chat, 1- and 2-image chat, streams, images):
  no error, and the engine batched them. Prints p50/p95 latency and throughput."""
  srv, base = server
  img = {"type": "image_url", "image_url": {"url": data_uri(media_dir / "im0.png")}}
  kinds = [
      ("chat", {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}),
      ("chat", {"messages": [{"role": "user", "content": [img, {"type": "text", "text": "What?"}]}],
                "max_tokens": 8, "temperature": 0.7, "top_p": 0.9}),
      ("chat", {"messages": two_image_message(media_dir), "max_tokens": 8, "stream": True}),
      ("image", {"prompt": "a blue circle", "n": 1, "seed": 3}),
  ]
  jobs = [kinds[i % len(kinds)] for i in range(32)]
  before = dict(srv.engine.stats)

  def call(job):
    kind, body = job
    url = base + ("/v1/chat/completions" if kind == "chat" else "/v1/images/generations")
    t0 = time.perf_counter()
    r = httpx.post(url, json=body, timeout=600)
    assert r.status_code == 200, r.text
    if body.get("stream"):
      assert r.text.rstrip().endswith("data: [DONE]")
    return time.perf_counter() - t0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    latencies = sorted(pool.map(call, jobs))
  wall = time.perf_counter() - t0
  p50, p95 = np.percentile(latencies, 50), np.percentile(latencies, 95)
  batches = srv.engine.stats["batches"] - before["batches"]
  print(f"\nload: 32 mixed requests in {wall:.1f} s: p50 {p50:.2f} s, p95 {p95:.2f} s, "
        f"{32 / wall:.2f} req/s, {batches} batches")
  assert batches < 32 and srv.engine.stats["max_batch_seen"] > 1


def test_requests_in_one_window_share_one_batched_call_compiled_once(server, pipe):
  """Jobs that arrive within the window run as one `decode.generate` call, padded
  to the batch / prompt-width / token-cap buckets; a second batch of other
  prompts, lengths, token caps and temperatures in the same buckets reuses the
  compiled program; greedy answers equal the one-at-a-time answers."""
  from showo2_jax.sample import decode  # pylint: disable=g-import-not-at-top
  srv, base = server
  eng = engine_lib.Engine(pipe, max_batch=4, window_s=60.0, max_new_tokens=64).start()

  def body(q, k, temperature=0.0):
    return {"messages": [{"role": "user", "content": q}], "max_tokens": k,
            "temperature": temperature}

  def run_batch(bodies):
    jobs = [srv.chat_job(api.ChatCompletionRequest(**b)) for b in bodies]
    futures = [eng.submit(j) for j in jobs]   # the 4th fills the batch: no 60 s wait
    return [f.result(timeout=600) for f in futures], jobs

  try:
    first = [body("Hello there", 8), body("Tell me a story.", 12), body("Hi", 5),
             body("What is the capital of France?", 8)]
    results, jobs = run_batch(first)
    assert eng.stats == {"batches": 1, "jobs": 4, "max_batch_seen": 4}
    assert eng.chat_buckets(jobs) == (4, 64, 0, 16)
    for b, r in zip(first, results):
      alone = httpx.post(base + "/v1/chat/completions", json=b, timeout=600).json()
      assert r.text == alone["choices"][0]["message"]["content"], b
    compiled = decode.generate._cache_size()  # pylint: disable=protected-access
    second = [body("Is it warm?", 16), body("Why?", 3),
              body("Count to three.", 9, 0.8), body("Name a colour.", 7, 1.2)]
    _, jobs = run_batch(second)
    assert eng.chat_buckets(jobs) == (4, 64, 0, 16) and eng.stats["batches"] == 2
    assert decode.generate._cache_size() == compiled  # pylint: disable=protected-access
  finally:
    eng.stop()


def test_a_failing_batch_is_a_one_line_500_and_the_server_keeps_serving(server, monkeypatch):
  srv, base = server

  def boom(jobs):
    raise RuntimeError("device lost")

  monkeypatch.setattr(srv.engine, "run_chat", boom)
  body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4}
  r = httpx.post(base + "/v1/chat/completions", json=body, timeout=600)
  assert r.status_code == 500 and "Traceback" not in r.text
  assert r.json()["error"]["message"] == "internal error: RuntimeError: device lost"
  assert r.json()["error"]["type"] == "server_error"
  monkeypatch.undo()
  assert httpx.post(base + "/v1/chat/completions", json=body, timeout=600).status_code == 200


@pytest.mark.slow
def test_compilation_cache_persists_across_processes(tmp_path):
  """`serve --compilation-cache-dir`: a second process loads the program the first compiled."""
  code = ("import sys, jax, jax.numpy as jnp\n"
          "from showo2_jax.serve import engine\n"
          "hits = []\n"
          "jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))\n"
          "engine.enable_compilation_cache(sys.argv[1])\n"
          "jax.jit(lambda x: jnp.tanh(x) * 3 + 1)(jnp.ones((5,))).block_until_ready()\n"
          "print('HIT' if '/jax/compilation_cache/cache_hits' in hits else 'MISS')\n")
  cache = tmp_path / "xla"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  runs = [subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True,
                         timeout=300, env=env, check=True).stdout.split()[-1] for _ in range(2)]
  assert runs == ["MISS", "HIT"] and any(cache.iterdir())


@pytest.mark.slow  # > 8 s on 2 cores (README: slow above ~3 s)
def test_lmms_eval_openai_compatible_requests(server, pipe, media_dir):
  """A faithful stand-in of lmms-eval's `openai_compatible` model (lmms-eval itself
  cannot be installed beside the pinned torch): its payload is one user message with
  the text part first and every visual as a base64 PNG data URI, `max_tokens` and
  `temperature` 0, sent concurrently with `AsyncOpenAI` (OPENAI_API_BASE)."""
  import asyncio  # pylint: disable=g-import-not-at-top

  def encode_image(image):  # as lmms-eval: PIL -> PNG -> base64
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("utf-8")

  images = [Image.open(media_dir / f"im{i}.png").convert("RGB") for i in range(2)]
  docs = [("Describe the image.", images[:1]), ("Which image is brighter?", images)]
  client = openai.AsyncOpenAI(base_url=server[1] + "/v1", api_key="EMPTY", max_retries=0,
                              timeout=600)

  async def ask(context, visuals):
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": context}]}],
               "model": "show-o2-tiny"}
    for img in visuals:
      payload["messages"][0]["content"].append(
          {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encode_image(img)}"}})
    payload["max_tokens"] = 5
    payload["temperature"] = 0
    response = await client.chat.completions.create(**payload)
    return response.choices[0].message.content

  async def run_all():
    try:
      return await asyncio.gather(*[ask(c, v) for c, v in docs])
    finally:
      await client.close()

  answers = asyncio.run(run_all())
  expected = pipe.understand([v for _, v in docs], [c for c, _ in docs], max_new_tokens=5)
  assert answers == expected


def test_serve_command_refuses_bad_flags_in_one_line(tmp_path, capsys):
  from showo2_jax.cli import main as cli  # pylint: disable=g-import-not-at-top
  model = ["--checkpoint", str(tmp_path), "--tokenizer", str(tmp_path), "--vae", str(tmp_path),
           "--compilation-cache-dir", ""]
  for flags, expect in ((["--max-batch-size", "0"], "--max-batch-size"),
                        (["--allowed-local-media-path", str(tmp_path / "nope")], "not a directory"),
                        (["--guidance-scale", "nan"], "guidance")):
    rc = cli.main(["serve", *model, *flags])
    err = capsys.readouterr().err
    assert rc == 1 and expect in err and "Traceback" not in err, err
