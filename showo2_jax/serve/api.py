"""OpenAI-compatible HTTP API of Show-o2 (FastAPI): chat, image generation and editing.

  POST /v1/chat/completions    messages with text and images -> answer (or SSE stream)
  POST /v1/images/generations  prompt -> n images (b64_json)
  POST /v1/images/edits        image + instruction (multipart form) -> n edited images
  GET  /v1/models, GET /health

Requests follow the OpenAI API reference; fields the model has no use for
(`frequency_penalty`, `user`, ...) are accepted and ignored. Differences:
  * chat: `temperature` defaults to 0 (greedy, as the original's understanding
    scripts); `n` must be 1; images are `image_url` parts with a data URI
    (`data:image/png;base64,...`) or a local file path/`file://` URI under a
    directory the server was started with (`--allowed-local-media-path`);
    remote http(s) URLs are not fetched. Images go where a text part holds an
    `<image>` marker, otherwise first, one per line, before the message's text
    (the LLaVA-OneVision multi-image layout Show-o2 was trained on).
  * images: `size` must be one the model generates (`GET /v1/models` lists
    them); `response_format` must be `b64_json`; extra fields
    `guidance_scale` (default 7.5), `num_inference_steps` (ODE grid points,
    default 50) and `seed` (default random; image i uses fold_in(seed, i)).
Errors are JSON `{"error": {"message", "type", "param", "code"}}` with status
400 for bad requests (never a traceback); internal failures are a 500 with a
one-line message.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import secrets
import time
import uuid
from typing import List, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from showo2_jax.data import sequences, tokenizer as tokenizer_lib
from showo2_jax.sample.pipeline import FlowSampling
from showo2_jax.serve.engine import ChatJob, Engine, ImageJob

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024


class RequestError(ValueError):
  """A bad request: answered with 400 and this message."""

  def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
               code: Optional[str] = None):
    super().__init__(message)
    self.param = param
    self.status = status
    self.code = code


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
  return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ----------------------------------------------------------------------------- protocol

class _Open(BaseModel):
  model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
  url: str
  detail: Optional[str] = None


class ContentPart(_Open):
  type: str
  text: Optional[str] = None
  image_url: Optional[Union[ImageURL, str]] = None


class Message(_Open):
  role: Literal["system", "user", "assistant", "developer"]
  content: Optional[Union[str, List[ContentPart]]] = None


class ChatCompletionRequest(_Open):
  model: Optional[str] = None
  messages: List[Message] = Field(min_length=1)
  max_tokens: Optional[int] = Field(default=None, ge=1)
  max_completion_tokens: Optional[int] = Field(default=None, ge=1)
  temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
  top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
  stop: Optional[Union[str, List[str]]] = None
  stream: bool = False
  n: int = 1
  seed: Optional[int] = None


class ImageGenerationRequest(_Open):
  prompt: str = Field(min_length=1)
  model: Optional[str] = None
  n: int = Field(default=1, ge=1)
  size: Optional[str] = None
  response_format: Optional[str] = "b64_json"
  guidance_scale: Optional[float] = Field(default=None, ge=0.0)
  num_inference_steps: Optional[int] = Field(default=None, ge=2, le=1000)
  seed: Optional[int] = Field(default=None, ge=0, lt=2**32)


# ----------------------------------------------------------------------------- images in

def _open_image(data: bytes, where: str) -> Image.Image:
  if len(data) > MAX_IMAGE_BYTES:
    raise RequestError(f"{where}: image of {len(data)} bytes is larger than "
                       f"{MAX_IMAGE_BYTES} bytes", "messages")
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    raise RequestError(f"{where}: not a readable image ({type(e).__name__}: {e})",
                       "messages") from None


def load_image_url(url: str, where: str, allowed_roots: tuple) -> Image.Image:
  """A data URI, or a local path / file:// URI under one of `allowed_roots`."""
  if url.startswith("data:"):
    head, _, payload = url.partition(",")
    if ";base64" not in head or not payload:
      raise RequestError(f"{where}: data URIs must be base64 ('data:image/png;base64,...')",
                         "messages")
    try:
      data = base64.b64decode(payload, validate=True)
    except ValueError:
      raise RequestError(f"{where}: invalid base64 in the data URI", "messages") from None
    return _open_image(data, where)
  if url.startswith(("http://", "https://")):
    raise RequestError(f"{where}: remote image URLs are not fetched; send the image as a data "
                       "URI (data:image/png;base64,...)", "messages")
  path = url[len("file://"):] if url.startswith("file://") else url
  real = os.path.realpath(path)
  if not any(real == r or real.startswith(r + os.sep) for r in allowed_roots):
    raise RequestError(f"{where}: local image '{path}' is outside the directories the server "
                       "may read (start it with --allowed-local-media-path DIR)", "messages")
  if not os.path.isfile(real):
    raise RequestError(f"{where}: local image '{path}' does not exist", "messages")
  with open(real, "rb") as f:
    return _open_image(f.read(), where)


def encode_png(image: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- the app

class Server:
  """Request handling on top of an `Engine` (protocol checks, prompts, responses)."""

  def __init__(self, engine: Engine, *, model_name: str = "show-o2",
               allowed_local_media_paths=(), default_max_tokens: int = 300,
               max_images_per_request: int = 8, flow: FlowSampling = FlowSampling()):
    self.engine = engine
    self.pipe = engine.pipe
    self.model_name = model_name
    self.allowed_roots = tuple(os.path.realpath(p) for p in allowed_local_media_paths)
    self.default_max_tokens = default_max_tokens
    self.max_images = max_images_per_request
    self.flow = flow
    self.created = int(time.time())

  @property
  def sizes(self) -> list[str]:
    r = self.pipe.resolution
    return [f"{r}x{r}"]

  # -------------------------------------------------------------------- chat
  def chat_job(self, req: ChatCompletionRequest) -> ChatJob:
    """Validates a chat request and builds its prompt (runs on a handler thread)."""
    if req.n != 1:
      raise RequestError("only n=1 is supported", "n")
    pipe = self.pipe
    chat = pipe.chat
    turns, images, pending_user = [], [], None
    for i, msg in enumerate(req.messages):
      if msg.role in ("system", "developer"):
        if i != 0:
          raise RequestError(f"messages[{i}]: a system message must come first", "messages")
        chat = sequences.ChatIds.build(
            pipe.tokenizer, "system\n" + self._text_only(msg, i) + "<|im_end|>")
      elif msg.role == "user":
        if pending_user is not None:  # two user turns in a row: merge them
          pending_user += "\n" + self._user_text(msg, i, images)
        else:
          pending_user = self._user_text(msg, i, images)
      else:
        if pending_user is None:
          raise RequestError(f"messages[{i}]: an assistant message must follow a user message",
                             "messages")
        turns.append((pending_user, self._text_only(msg, i)))
        pending_user = None
    if pending_user is None:
      raise RequestError("the last message must be a user message", "messages")
    turns.append((pending_user, ""))
    self._check_turn_lengths(turns)
    if len(images) > self.max_images:
      raise RequestError(f"{len(images)} images in one request; at most {self.max_images}",
                         "messages")
    try:
      row = sequences.conversation_prompt(pipe.tokenizer, turns, pipe.special, chat,
                                          num_visual_tokens=pipe.understanding_block,
                                          num_images=len(images))
    except sequences.LayoutError as e:
      raise RequestError(str(e), "messages") from None
    max_tokens = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
    if max_tokens > self.engine.max_new_tokens:
      raise RequestError(f"max_tokens {max_tokens} is above this server's limit of "
                         f"{self.engine.max_new_tokens}", "max_tokens")
    if row["prompt_length"] + max_tokens > pipe.max_context:
      raise RequestError(f"This model's maximum context length is {pipe.max_context} tokens. "
                         f"However, you requested {row['prompt_length'] + max_tokens} tokens "
                         f"({row['prompt_length']} in the messages, {max_tokens} in the "
                         "completion). Please reduce the length of the messages or completion.",
                         "messages", code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4:
      raise RequestError("at most 4 stop sequences", "stop")
    return ChatJob(row=row, images=images, temperature=req.temperature or 0.0,
                   top_p=1.0 if req.top_p is None else req.top_p, max_tokens=max_tokens,
                   stop=stop)

  def _text_only(self, msg: Message, i: int) -> str:
    if msg.content is None or isinstance(msg.content, str):
      return msg.content or ""
    texts = []
    for j, part in enumerate(msg.content):
      if part.type != "text":
        raise RequestError(f"messages[{i}].content[{j}]: only text is allowed in "
                           f"{msg.role} messages", "messages")
      texts.append(part.text or "")
    return "\n".join(texts)

  def _check_turn_lengths(self, turns) -> None:
    """Refuses a user (or earlier assistant) turn the prompt layout would cut: the
    stage-2c template keeps the first 512 tokens of each (spec 4.3), as the CLI's
    `understand` refuses a longer question unless --truncate."""
    for t, (user, answer) in enumerate(turns):
      for role, text, limit in (("user", user, sequences.MMU_SOURCE_MAX_LEN),
                                ("assistant", answer, sequences.MMU_TARGET_MAX_LEN - 1)):
        n = len(tokenizer_lib.encode(self.pipe.tokenizer, text)) if text else 0
        if n > limit:
          raise RequestError(
              f"This model's maximum context length is {limit} tokens per {role} message. "
              f"However, {role} turn {t + 1} of your messages resulted in {n} tokens. "
              "Please reduce the length of the messages.", "messages",
              code="context_length_exceeded")

  def _user_text(self, msg: Message, i: int, images: list) -> str:
    """The user turn with one `<image>` per image part; appends the decoded images."""
    if msg.content is None or isinstance(msg.content, str):
      text = msg.content or ""
      if sequences.IMAGE_MARKER in text:
        raise RequestError(f"messages[{i}]: '<image>' in text without image parts", "messages")
      return text
    texts, own = [], []
    for j, part in enumerate(msg.content):
      where = f"messages[{i}].content[{j}]"
      if part.type == "text":
        texts.append(part.text or "")
      elif part.type in ("image_url", "input_image"):
        url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
        if not url:
          raise RequestError(f"{where}: image_url.url is missing", "messages")
        own.append(load_image_url(url, where, self.allowed_roots))
      else:
        raise RequestError(f"{where}: unsupported content type '{part.type}' "
                           "(text and image_url are)", "messages")
    images += own
    try:
      return sequences.with_image_markers("\n".join(texts), len(own))
    except ValueError as e:
      raise RequestError(f"messages[{i}]: {e}", "messages") from None

  def chat_response(self, job: ChatJob, result) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": self.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": result.prompt_tokens,
                  "completion_tokens": result.completion_tokens,
                  "total_tokens": result.prompt_tokens + result.completion_tokens},
    }

  # ------------------------------------------------------------------ images
  def image_job(self, prompt: str, n: int, size: Optional[str], response_format: Optional[str],
                guidance_scale=None, num_inference_steps=None, seed=None, source=None) -> ImageJob:
    if n > self.engine.max_batch:
      raise RequestError(f"n={n} is above this server's batch limit of {self.engine.max_batch}",
                         "n")
    if size not in (None, "auto") and size not in self.sizes:
      raise RequestError(f"size '{size}' is not supported by this model; supported: "
                         f"{', '.join(self.sizes)}", "size")
    if response_format not in (None, "b64_json"):
      raise RequestError("only response_format 'b64_json' is supported (no image hosting)",
                         "response_format")
    try:
      ids = self.pipe.prompt_ids([prompt])[0]
    except ValueError as e:
      raise RequestError(str(e), "prompt") from None
    try:
      flow = FlowSampling(
          num_steps=num_inference_steps or self.flow.num_steps,
          guidance_scale=self.flow.guidance_scale if guidance_scale is None else guidance_scale,
          time_shifting_factor=self.flow.time_shifting_factor, method=self.flow.method)
    except ValueError as e:
      raise RequestError(str(e), "guidance_scale") from None
    seed = secrets.randbelow(2**31) if seed is None else seed
    return ImageJob(prompt_ids=ids, n=n, sampling=flow, seed=seed, source=source)

  @staticmethod
  def images_response(images: np.ndarray) -> dict:
    return {"created": int(time.time()), "data": [{"b64_json": encode_png(im)} for im in images]}


def create_app(server: Server):
  """The FastAPI application (the engine must be started; `serve` does it)."""
  app = FastAPI(title="showo2-jax", description="OpenAI-compatible Show-o2 server")

  @app.exception_handler(RequestError)
  async def _request_error(_, exc: RequestError):
    return JSONResponse(error_body(str(exc), param=exc.param, code=exc.code),
                        status_code=exc.status)

  @app.exception_handler(RequestValidationError)
  async def _validation_error(_, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # loc ('body', <offset>): not a field
      detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
      return JSONResponse(error_body(f"request body is not valid JSON: {detail}"),
                          status_code=400)
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body",)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
      message += f" (and {len(errors) - 1} more problems)"
    return JSONResponse(error_body(message, param=param), status_code=400)

  @app.exception_handler(HTTPException)
  async def _http_error(_, exc: HTTPException):
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

  @app.exception_handler(Exception)
  async def _internal_error(_, exc: Exception):
    log.exception("internal error")
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                        status_code=500)

  @app.get("/health")
  async def health():
    return {"status": "ok", "engine": dict(server.engine.stats)}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{
        "id": server.model_name, "object": "model", "created": server.created,
        "owned_by": "showo2-jax", "image_sizes": server.sizes,
        # Chat: prompt + completion positions, each user message at most 512 tokens
        # (longer is a 400, context_length_exceeded); image prompts: max_seq_len's text part.
        "max_context": server.pipe.max_context,
        "max_message_tokens": sequences.MMU_SOURCE_MAX_LEN,
        "max_image_prompt_tokens": server.pipe.max_text_len,
        "max_seq_len": server.pipe.max_seq_len}]}

  @app.post("/v1/chat/completions")
  async def chat_completions(req: ChatCompletionRequest):
    job = await run_in_threadpool(server.chat_job, req)
    if not req.stream:
      result = await asyncio.wrap_future(server.engine.submit(job))
      return server.chat_response(job, result)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job.on_text = lambda delta: loop.call_soon_threadsafe(queue.put_nowait, delta)
    future = server.engine.submit(job)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, finish=None) -> str:
      body = {"id": ident, "object": "chat.completion.chunk", "created": created,
              "model": server.model_name,
              "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
      return f"data: {json.dumps(body)}\n\n"

    async def events():
      yield chunk({"role": "assistant", "content": ""})
      while True:
        delta = await queue.get()
        if delta is None:
          break
        yield chunk({"content": delta})
      try:
        result = future.result()
      except Exception as e:  # pylint: disable=broad-except
        log.exception("streamed chat failed")
        yield f"data: {json.dumps(error_body(f'internal error: {e}', 'server_error'))}\n\n"
        return
      yield chunk({}, result.finish_reason)
      yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

  @app.post("/v1/images/generations")
  async def images_generations(req: ImageGenerationRequest):
    job = await run_in_threadpool(
        server.image_job, req.prompt, req.n, req.size, req.response_format, req.guidance_scale,
        req.num_inference_steps, req.seed)
    images = await asyncio.wrap_future(server.engine.submit(job))
    return server.images_response(images)

  @app.post("/v1/images/edits")
  async def images_edits(image: UploadFile = File(...), prompt: str = Form(...),
                         n: int = Form(1), size: Optional[str] = Form(None),
                         response_format: Optional[str] = Form("b64_json"),
                         guidance_scale: Optional[float] = Form(None),
                         num_inference_steps: Optional[int] = Form(None),
                         seed: Optional[int] = Form(None)):
    if server.pipe.vae is None:
      raise RequestError("this server has no VAE (start it with --vae)", "image")
    if n < 1:
      raise RequestError("n must be >= 1", "n")
    source = _open_image(await image.read(), "image")
    job = await run_in_threadpool(server.image_job, prompt, n, size, response_format,
                                  guidance_scale, num_inference_steps, seed, source)
    images = await asyncio.wrap_future(server.engine.submit(job))
    return server.images_response(images)

  return app
