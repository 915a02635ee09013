"""Serve a :class:`~lit_vr1.rewards.reward_model.JudgeScorer` over HTTP, on LitServe.

    python -m lit_vr1.rewards.serve --model Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --device cuda:0

LitServe (Lightning's model server: FastAPI + uvicorn, the model in its own worker
process, request timeouts, health) runs the judge; a guard in front of it (an ASGI
middleware, :class:`Guard`) makes hostile clients harmless before a request reaches the
model. Two protocols, one model:

* ``POST /score`` with ``{"items": [{"question": str, "answer": str, "image": base64 image or null}]}``
  (a question with several images: also ``"images": [base64 image, ...]``, all of them, the
  first equal to ``"image"``, which older servers read)
  -> ``200 {"scores": [p(yes) / (p(yes) + p(no)), one per item]}``
  (what :class:`~lit_vr1.rewards.reward_model.RemoteRewardModel` speaks by default);
* ``POST /v1/chat/completions``, OpenAI's chat protocol: one user message holding the
  judge prompt as text and its images (``image_url`` parts with ``data:`` URLs, shown in order);
  ``logprobs: true`` -> the answer "yes" or "no" with the log-probabilities of both
  (``RemoteRewardModel(protocol="openai")`` speaks it, and so do vLLM and SGLang, so a
  7B judge can run there instead, unchanged on the client side);
* ``GET /health`` -> ``200 ok`` once the model is loaded (503 before); ``GET /info``
  names the model.

What the guard enforces (each a status code and a JSON ``{"error": ...}`` body):
Content-Length required (411), a number >= 0 (400), at most ``--max-body-mb`` (413); the
whole body within ``--body-timeout-s`` (408: a client that announces 1000 bytes and sends 13
cannot hold the server), all of it (400 when the client closes early); at most
``--max-items`` items, ``--max-text-chars`` characters of question plus answer per item,
``--max-images`` images per item, ``--max-image-pixels`` pixels per image and
``--max-request-pixels`` pixels for the request's images together, every copy counted (a prompt's image
sent once per completion counts once per completion; it is decoded once), read from the image headers before anything is
decoded (400); no unknown field in a /score body or item (400); a token (``Authorization:
Bearer <token>`` or ``X-API-Key``) on every path but ``/health`` when the server has one
(401). A server bound to anything but loopback refuses to start without a token
(``--api-key`` or ``LIT_VR1_JUDGE_KEY``).
uvicorn queues up to 2048 pending connections. Work per request is bounded by the item,
text, image and pixel caps (at the defaults 64 Mi pixels of distinct images, each decoded
once; with ``--max-batch-size`` N, N requests' worth at once), and a request that waited
longer than ``--request-timeout-s`` in the queue is answered 504 and not scored (its client has given up). Text from the policy is
untrusted: the tokenizer's special tokens (``<|image_pad|>``, ``<|im_end|>``, ...) are
removed from it before it reaches the judge's prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import errno
import glob
import io
import ipaddress
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import litserve as ls
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from lit_vr1.data import images
from lit_vr1.data.jsonl import MAX_ASPECT
from lit_vr1.rewards.reward_model import KEY_ENV, ScoreItem

SCORE_PATH, CHAT_PATH = "/score", "/v1/chat/completions"
OPEN_PATHS = ("/health",)  # answered without a token


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 10.0
    max_items: int = 64
    max_text_chars: int = 16_000
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8  # per item (a /score item, a chat request)
    max_request_pixels: int = 64 * 1024 * 1024  # every image of a request together (about 200 MB as RGB)


# the formats a request's images may have: the web's and the datasets'. Others PIL reads are
# refused from their first bytes: an ICNS file declares one size in its header and decodes a
# larger image inside, past the pixel cap (found by a hostile client, 2026-12-05)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ECHO_CHARS = 60  # at most this much of a client's own text comes back in an error


def _echo(value: Any) -> str:
    """``value`` as an error message repeats it: its repr, cut to :data:`ECHO_CHARS` (a 40 MB
    field name came back whole, three times its size once escaped)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


class BadRequest(ValueError):
    """The request is not a valid scoring request; ``status`` and the message say why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- request parsing (pure)


def _image_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64 string or null")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    value = "".join(value.split())  # line breaks, as the base64 command writes every 76 characters
    if not value:
        raise BadRequest(f"{where} is an empty string: give a base64 image, or null for none")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where} is not a base64-encoded image: {e}") from None


def open_image(data: bytes, where: str, limits: Limits) -> Image.Image:
    """The image in ``data``, its size checked from the header before any pixel is decoded
    (a 20000 x 20000 PNG is a few hundred bytes); :func:`decoded` decodes it."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = image.size
    except Image.DecompressionBombError as e:  # PIL's own guard, far above ours: "Image size (N pixels) exceeds ..."
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{declared.group(1)} pixels" if declared else "more pixels than PIL opens"
        raise BadRequest(f"{where} declares {size}, over the limit of {limits.max_image_pixels}; send a smaller "
                         "image") from None
    except UnidentifiedImageError:
        raise BadRequest(f"{where} is not an image the judge reads ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError) as e:
        raise BadRequest(f"{where} is not an image PIL can read: {e}") from None
    if width * height > limits.max_image_pixels:
        raise BadRequest(f"{where} is {width}x{height} = {width * height} pixels, over the limit of "
                         f"{limits.max_image_pixels}; send a smaller image")
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT:
        raise BadRequest(f"{where} is {width}x{height}, an aspect ratio above {MAX_ASPECT}, which the Qwen-VL "
                         "processors refuse; crop or pad it")
    return image


def decoded(image: Image.Image, where: str) -> Image.Image:
    """An opened image (:func:`open_image`, header only) decoded to RGB, upright as the training
    data is read."""
    problem = images.mode_problem(image)
    if problem:
        raise BadRequest(f"{where} has mode {image.mode}: {problem}")
    try:
        turn = images.UPRIGHT.get(images.orientation(image))  # from the header, as the training data is read
        image.load()
        return images.to_rgb(image.transpose(turn) if turn is not None else image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{where} cannot be decoded: {e}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape (\ud800) reaches JSON but no tokenizer
        raise BadRequest(f"{where} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return value


ITEM_FIELDS = ("question", "answer", "image", "images")


def _refuse_unknown(obj: dict, known: tuple[str, ...], where: str) -> None:
    """A misspelled field (``img`` for ``image``) is refused: ignored, the item was judged without it."""
    unknown = [k for k in obj if k not in known]
    if unknown:
        shown = ", ".join(map(_echo, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise BadRequest(f"{where} has the unknown field(s) {shown} (fields: {', '.join(known)})")


class RequestImages:
    """The images of one request, each distinct one (by its bytes) opened and decoded once (a
    client sends a prompt's image once per completion), each one sent counted in the
    request's pixels: the judge reads every copy."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.opened: dict[bytes, Image.Image] = {}
        self.rgb: dict[int, Image.Image] = {}  # id of an opened image -> decoded
        self.pixels = 0  # of every image sent, copies included

    def open(self, value: Any, where: str) -> Image.Image:
        """The image of a base64 string (header read, nothing decoded), the same object for the same bytes."""
        data = _image_bytes(value, where)
        if data not in self.opened:
            self.opened[data] = open_image(data, where, self.limits)
        image = self.opened[data]
        self.pixels += image.size[0] * image.size[1]
        return image

    def check_budget(self) -> None:
        """The pixels of every image sent (from the headers) within ``max_request_pixels``: each
        under its own cap, 64 items of 8 images could still ask the judge to read gigabytes of
        pixels (``RemoteRewardModel`` splits its batches to stay within it)."""
        if self.pixels > self.limits.max_request_pixels:
            raise BadRequest(f"the request's images hold {self.pixels} pixels (an image sent twice counted twice), over "
                             f"the limit of {self.limits.max_request_pixels} per request; send fewer or smaller images "
                             "per request (RemoteRewardModel: max_request_pixels)")

    def decoded(self, image: Image.Image, where: str) -> Image.Image:
        """``image`` (from :meth:`open`) decoded to RGB, once per distinct image."""
        if id(image) not in self.rgb:
            self.rgb[id(image)] = decoded(image, where)
        return self.rgb[id(image)]


def parse_score_request(data: Any, limits: Limits, decode: bool = True) -> list[ScoreItem]:
    """The items of a ``POST /score`` body (decoded JSON), checked against ``limits``."""
    if isinstance(data, dict):
        _refuse_unknown(data, ("items",), "the body")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise BadRequest('body must be a JSON object with a list "items"')
    raw_items, opened = data["items"], RequestImages(limits)
    if len(raw_items) > limits.max_items:
        raise BadRequest(f"{len(raw_items)} items, over the limit of {limits.max_items} per request; send smaller batches")
    items = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise BadRequest(f"items[{i}] is not an object")
        _refuse_unknown(raw, ITEM_FIELDS, f"items[{i}]")
        question, answer = _text(raw.get("question"), f"items[{i}].question"), _text(raw.get("answer"), f"items[{i}].answer")
        if len(question) + len(answer) > limits.max_text_chars:
            raise BadRequest(f"items[{i}] has {len(question) + len(answer)} characters of question and answer, over "
                             f"the limit of {limits.max_text_chars}")
        items.append(ScoreItem(question, answer, _item_images(raw, f"items[{i}]", limits, opened)))
    opened.check_budget()
    if decode:  # only once every header is read and the whole request is within its budget
        for i, it in enumerate(items):
            it.images = [opened.decoded(im, f"items[{i}].images[{k}]") for k, im in enumerate(it.images)]
    return items


def _item_images(raw: dict, where: str, limits: Limits, opened: RequestImages) -> list[Image.Image]:
    """The images of one /score item: ``images`` (a list) when given, else ``image`` (one, or
    null). A client sends both for a multi-image question (``image`` its first, which servers
    older than ``images`` read), so both must agree."""
    many = raw.get("images")
    if raw.get("image") is not None and many is not None and (not isinstance(many, list) or not many
                                                               or many[0] != raw["image"]):
        raise BadRequest(f"{where} has an \"image\" that is not the first of its \"images\"; send the images as "
                         "\"images\" (with \"image\" their first, for older servers), or one image as \"image\"")
    if many is None:
        one = raw.get("image")
        return [] if one is None else [opened.open(one, f"{where}.image")]
    if not isinstance(many, list):
        raise BadRequest(f"{where}.images must be a list of base64 images")
    if len(many) > limits.max_images:
        raise BadRequest(f"{where} has {len(many)} images, over the limit of {limits.max_images} per item")
    return [opened.open(b64, f"{where}.images[{k}]") for k, b64 in enumerate(many)]


MAX_MODEL_CHARS = 256  # a chat request's "model", which the answer names again


@dataclass
class ChatPrompt:
    """One OpenAI chat request reduced to what the judge reads: the prompt text, its images."""

    text: str
    images: list[Image.Image]
    model: str


def parse_chat_request(data: Any, limits: Limits, decode: bool = True) -> ChatPrompt:
    """The judge prompt of an OpenAI ``/v1/chat/completions`` body: one user message whose
    content is a string or parts of type ``text`` and ``image_url`` (at most ``max_images``)."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list) or not data["messages"]:
        got = f" (its fields: {', '.join(map(_echo, list(data)[:5]))})" if isinstance(data, dict) else ""
        raise BadRequest(f'body must be a JSON object with a non-empty list "messages"{got}')
    users = [m for m in data["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1:
        raise BadRequest("the judge takes exactly one user message")
    content = users[0].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise BadRequest("messages[].content must be a string or a list of parts")
    texts, images, opened = [], [], RequestImages(limits)
    for k, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_text(part.get("text"), f"content[{k}].text"))
        elif kind == "image_url":
            url = part.get("image_url", {})
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise BadRequest(f"content[{k}].image_url must be a data: URL (the judge fetches nothing)")
            images.append(opened.open(url, f"content[{k}].image_url"))
        else:
            raise BadRequest(f"content[{k}] has type {_echo(kind)}; the judge reads text and image_url parts")
    if len(images) > limits.max_images:
        raise BadRequest(f"{len(images)} images, over the limit of {limits.max_images} per request")
    opened.check_budget()
    if decode:
        images = [opened.decoded(im, f"image {k + 1}") for k, im in enumerate(images)]
    text = "\n".join(texts)
    if not text.strip() or len(text) > limits.max_text_chars:
        raise BadRequest(f"the prompt must have 1 to {limits.max_text_chars} characters, got {len(text)}")
    model = _text(data.get("model") or "", "model")  # echoed in the answer
    if len(model) > MAX_MODEL_CHARS:
        raise BadRequest(f"model has {len(model)} characters, over {MAX_MODEL_CHARS}")
    return ChatPrompt(text, images, model)


def chat_response(prompt: ChatPrompt, logp_yes: float, logp_no: float, model_name: str, top: int) -> dict:
    """An OpenAI chat completion answering "yes" or "no" (the likelier), with both words'
    log-probabilities (log-softmax over the whole vocabulary) in ``logprobs``."""
    answer, logp = ("yes", logp_yes) if logp_yes >= logp_no else ("no", logp_no)
    tops = sorted([("yes", logp_yes), ("no", logp_no)], key=lambda t: -t[1])[: max(top, 2)]
    return {
        "id": f"judge-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
        "model": prompt.model or model_name,
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": answer},
            "logprobs": {"content": [{"token": answer, "logprob": logp, "bytes": list(answer.encode()),
                                      "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                       for t, v in tops]}]},
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
    }


# --------------------------------------------------------------------------- the guard (ASGI middleware)


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
    except (OSError, RuntimeError):  # the client has gone: nothing to tell it
        pass


class Guard:
    """ASGI middleware in front of LitServe; see the module docstring for what it refuses.

    It reads the whole body itself (bounded in size and time), validates it without
    decoding pixels, and hands the body on to LitServe; ``/v1/chat/completions`` is served
    by the same model as ``/score`` (the path is rewritten, the body tells them apart)."""

    def __init__(self, app, limits: Limits = Limits(), api_key: str | None = None) -> None:
        self.app, self.limits, self.api_key = app, limits, api_key

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key:
            return True
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        given = bearer[7:].strip() if bearer.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
        return bool(given) and given == self.api_key

    async def _read_body(self, receive, length: int) -> bytes:
        chunks, size = [], 0
        deadline = time.monotonic() + self.limits.body_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BadRequest(f"the body did not arrive within {self.limits.body_timeout_s:g} s", 408)
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise BadRequest(f"the body did not arrive within {self.limits.body_timeout_s:g} s", 408) from None
            if message["type"] == "http.disconnect":
                raise BadRequest(f"the client closed after {size} of {length} bytes", 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:
                raise BadRequest(f"the body is longer than its Content-Length {length}", 400)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size != length:
            raise BadRequest(f"the body has {size} of the {length} bytes its Content-Length announces", 400)
        return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"].rstrip("/") or "/"
        if path not in OPEN_PATHS and not self._authorized(headers):
            await _send_json(send, 401, {"error": "a valid token is required: Authorization: Bearer <token> "
                                                  "(or X-API-Key: <token>)"})
            return
        if scope["method"] != "POST" or path not in (SCORE_PATH, CHAT_PATH):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._checked_body(headers, receive)
            # off the event loop: a 60 MB body of tiny items took 3.5 s to read, every other client waiting
            await asyncio.to_thread(self.validate, body, path)
        except BadRequest as e:
            await _send_json(send, e.status, {"error": str(e)})
            return
        except (ValueError, RecursionError) as e:  # JSON's own errors, and Python's 4300-digit integer limit
            await _send_json(send, 400, {"error": f"body is not JSON the judge reads: {str(e)[:200]}"})
            return
        # LitServe reads the body as JSON whatever the client called it; the chat protocol
        # is served by the same API (the body tells the two apart)
        fixed = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [(b"content-type", b"application/json")]
        scope = dict(scope, headers=fixed)
        if path == CHAT_PATH:
            scope.update(path=SCORE_PATH, raw_path=SCORE_PATH.encode())
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def validate(self, body: bytes, path: str) -> None:
        """The request read and checked as the worker will read it, its images decoded: a request
        the worker would refuse is refused here, on its own (with ``--max-batch-size`` above 1 a
        truncated image failed every request batched with it)."""
        data = json.loads(body)
        if path == CHAT_PATH:
            parse_chat_request(data, self.limits)
        else:
            parse_score_request(data, self.limits)

    async def _checked_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        raw = headers.get(b"content-length")
        if raw is None:
            raise BadRequest("a Content-Length header is required", 411)
        try:
            length = int(raw)
        except ValueError:
            raise BadRequest(f"Content-Length {raw[:40]!r} is not a number") from None
        if length < 0:
            raise BadRequest(f"Content-Length {length} is negative")
        if length > self.limits.max_body_bytes:
            raise BadRequest(f"body of {length} bytes is over the limit of {self.limits.max_body_bytes}", 413)
        return await self._read_body(receive, length)


# --------------------------------------------------------------------------- the model behind it


class JudgeAPI(ls.LitAPI):
    """The judge as a LitServe API: its worker builds the
    :class:`~lit_vr1.rewards.reward_model.JudgeScorer` once (``setup``), then answers
    ``/score`` and chat requests; with ``max_batch_size`` > 1 LitServe hands it several
    requests at once and their items go through the judge together."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 min_pixels: int | None = None, max_pixels: int | None = None, limits: Limits = Limits(),
                 max_batch_size: int = 1, batch_timeout: float = 0.0, think_tokens: int = 0) -> None:
        with warnings.catch_warnings():
            # batch / unbatch serve max_batch_size > 1 and are never called at 1, LitServe's default: its
            # "max_batch_size parameter was not set" at every start says nothing here
            warnings.filterwarnings("ignore", message=".*max_batch_size parameter was not set")
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=SCORE_PATH)
        self.scorer_args = dict(model=model, device=device, dtype=dtype, batch_size=batch_size,
                                min_pixels=min_pixels, max_pixels=max_pixels, think_tokens=think_tokens)
        self.model_name, self.limits = model, limits
        self.server_pid = os.getpid()  # built in the server process, which spawns the worker

    def setup(self, worker_device) -> None:
        from lit_vr1.rewards.reward_model import JudgeScorer

        die_with_parent(self.server_pid)  # the worker is spawned: the server's at-fork hook does not reach it

        try:
            self.scorer = JudgeScorer(**self.scorer_args)
        except Exception as e:  # noqa: BLE001 - weights that do not load: one line, not two tracebacks
            first = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
            print(f"python -m lit_vr1.rewards.serve: error: --model {self.scorer_args.get('model')!r} could not be "
                  f"loaded ({type(e).__name__}: {first[:400]})", file=sys.stderr, flush=True)
            os._exit(LOAD_FAILED)  # the server's watch then stops it (exit 1)

    def decode_request(self, request: dict) -> ChatPrompt | list[ScoreItem]:
        try:
            if "messages" in request:
                return parse_chat_request(request, self.limits)
            return parse_score_request(request, self.limits)
        except BadRequest as e:
            raise HTTPException(e.status, str(e)) from None

    def batch(self, inputs: list) -> list:
        return inputs

    def unbatch(self, outputs: list) -> list:
        return outputs

    def _chat(self, prompt: ChatPrompt) -> dict:
        logp_yes, logp_no = self.scorer.yes_no_logprobs([prompt.text], [prompt.images])
        return chat_response(prompt, logp_yes[0], logp_no[0], self.model_name, top=2)

    def predict(self, decoded):
        if self.max_batch_size <= 1:
            decoded = [decoded]
        # the items of every /score request in the batch go through the judge together
        flat = [it for d in decoded if not isinstance(d, ChatPrompt) for it in d]
        scores = iter(self.scorer.score(flat) if flat else [])
        out = [self._chat(d) if isinstance(d, ChatPrompt) else {"scores": [float(next(scores)) for _ in d]}
               for d in decoded]
        return out if self.max_batch_size > 1 else out[0]

    def encode_response(self, output: dict) -> dict:
        return output


def free_port() -> int:
    """A TCP port free on loopback now (LitServe takes ports 1024-65535, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A judge server started by :func:`launch`: its base URL and its process (group) id."""

    url: str
    pid: int

    def memory_mib(self) -> float:
        """Resident memory of the server's whole process group (LitServe's processes), MiB."""
        total = 0
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.pid:  # the process group id
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss in pages
            except (OSError, ValueError, IndexError):
                continue
        return total / 2**20


LAUNCHER_ENV = "LIT_VR1_JUDGE_LAUNCHER"  # the pid of the process that ran launch()


@contextlib.contextmanager
def launch(model: str, *args: str, port: int | None = None, env: dict[str, str] | None = None,
           ready_timeout_s: float = 180.0):
    """Start ``python -m lit_vr1.rewards.serve --model <model> <args>`` on loopback, wait for
    ``/health``, yield a :class:`Served` (``.url`` is ``http://127.0.0.1:<port>``), stop it
    at the end (its whole process group: LitServe runs the model in a worker process). For
    notebooks, scripts and tests; a server that dies while starting raises with its output.
    ``port`` (default: a free one) is given here, not in ``args``; a taken port is refused.
    On Linux the server also ends when the process that launched it is killed. The process
    that launched it is its parent: call ``launch`` from a thread that outlives the server
    (Linux ties the death signal to the thread that started the child)."""
    given = [a for a in args if a.split("=")[0] in ("--port", "--host")]
    if given:
        raise ValueError(f"launch: give the port as launch(model, port=...), not {given[0]!r} in args (launch waits on "
                         "its own port; the server is on loopback)")
    port = port or free_port()
    try:
        try_binding("127.0.0.1", port)  # a server already there would answer /health for this one
    except OSError as e:
        raise RuntimeError(f"launch: 127.0.0.1:{port} is taken ({e.strerror}); stop what holds it or give another port") from None
    cmd = [sys.executable, "-m", "lit_vr1.rewards.serve", "--model", model, "--port", str(port), *args]
    log = tempfile.TemporaryFile(mode="w+")
    # the server ends with this process, even killed (a notebook kernel restarted, `timeout` on a script)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {}), LAUNCHER_ENV: str(os.getpid())})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the judge server exited with status {proc.returncode} while starting: "
                                   f"{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the judge server did not answer {url}/health within {ready_timeout_s:g} s")
            time.sleep(0.25)
        yield Served(url, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_vr1.rewards.serve",
                                     description="Serve a judge model (a yes/no verifier) for RemoteRewardModel over HTTP.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="judge model: name, path, or tiny:qwen2_5_vl")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: loopback, or 0.0.0.0 / :: (then a token is required)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (1024 to 65535)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="the judge's weights")
    parser.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    parser.add_argument("--max-batch-size", type=int, default=1, help="requests LitServe batches together")
    parser.add_argument("--batch-timeout", type=float, default=0.0, help="seconds LitServe waits to fill a batch")
    parser.add_argument("--think-tokens", type=int, default=0,
                        help="0: the verdict is the judge's first token; N: the judge first reasons for up to N tokens "
                             "(to </think>) and the verdict is read after that (a judge trained to think first)")
    parser.add_argument("--min-pixels", type=int, default=None, help="the processor's min_pixels per image (None: its own)")
    parser.add_argument("--max-pixels", type=int, default=None, help="the processor's max_pixels per image (None: its own)")
    parser.add_argument("--api-key", default=None,
                        help=f"token clients must send (None: ${KEY_ENV} if set); required off loopback")
    parser.add_argument("--max-items", type=int, default=Limits.max_items, help="items per /score request")
    parser.add_argument("--max-text-chars", type=int, default=Limits.max_text_chars,
                        help="characters of question and answer together per item")
    parser.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels, help="pixels per image")
    parser.add_argument("--max-images", type=int, default=Limits.max_images, help="images per item (at least 1)")
    parser.add_argument("--max-request-pixels", type=int, default=Limits.max_request_pixels,
                        help="pixels of a request's images together, every image sent counted (a copy too)")
    parser.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20, help="request body size")
    parser.add_argument("--body-timeout-s", type=float, default=Limits.body_timeout_s,
                        help="seconds a client has to send its whole body")
    parser.add_argument("--request-timeout-s", type=float, default=60.0,
                        help="queue wait before a 504, checked when the worker takes the next request")
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        fail(f"--port {args.port}: must be 1024 to 65535 (LitServe's range; a port below 1024 needs root)")
    if args.max_images < 1:
        fail(f"--max-images {args.max_images}: must be at least 1 (an item's image)")
    if args.max_request_pixels < args.max_image_pixels:
        fail(f"--max-request-pixels {args.max_request_pixels}: must be at least --max-image-pixels "
                     f"({args.max_image_pixels}), or no request could hold the largest image")
    for flag, value in (("--batch-size", args.batch_size), ("--max-batch-size", args.max_batch_size),
                        ("--max-items", args.max_items), ("--max-text-chars", args.max_text_chars),
                        ("--max-image-pixels", args.max_image_pixels)):
        if value < 1:
            fail(f"{flag} {value}: must be at least 1")
    for flag, value in (("--max-body-mb", args.max_body_mb), ("--body-timeout-s", args.body_timeout_s),
                        ("--request-timeout-s", args.request_timeout_s)):
        if not value > 0:
            fail(f"{flag} {value}: must be above 0")
    if args.think_tokens < 0:
        fail(f"--think-tokens {args.think_tokens}: must be 0 (no reasoning) or a number of tokens")
    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        fail(f"--host {args.host} opens the judge to the network: give a token with --api-key or {KEY_ENV} "
                     "(clients send it as Authorization: Bearer <token>)")
    check_judge_model(args.model)
    forking = {"parent": os.getpid()}  # LitServe's forked processes, from its constructor on, die with their parent

    def before_fork() -> None:
        forking["parent"] = os.getpid()

    os.register_at_fork(before=before_fork, after_in_child=lambda: die_with_parent(forking["parent"]))
    if os.environ.get(LAUNCHER_ENV, "").isdigit():  # started by launch(): end with the process that did
        die_with_parent(int(os.environ.pop(LAUNCHER_ENV)))
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), body_timeout_s=args.body_timeout_s,
                    max_items=args.max_items, max_text_chars=args.max_text_chars, max_image_pixels=args.max_image_pixels,
                    max_images=args.max_images, max_request_pixels=args.max_request_pixels)
    api = JudgeAPI(args.model, args.device, args.dtype, args.batch_size, args.min_pixels, args.max_pixels, limits,
                   args.max_batch_size, args.batch_timeout, args.think_tokens)
    # LitServe's "cpu" leaves devices alone: the scorer itself goes to --device (cuda:1, ...)
    server = ls.LitServer(api, accelerator="cpu", devices=1, timeout=args.request_timeout_s,
                          middlewares=[(Guard, {"limits": limits, "api_key": api_key})],
                          model_metadata={"model": args.model}, disable_openapi_url=True)
    refuse_a_taken_port(args.host, args.port)
    stop_workers_with_the_server()
    stop_when_the_worker_dies(server)
    try:
        # h11 refuses headers over 16 KiB (httptools, uvicorn's default parser, buffered 600 MB of them)
        server.run(host=args.host, port=args.port, generate_client_file=False, num_api_servers=1,
                   api_server_worker_type="thread", http="h11")
    except Exception as e:
        if ENDING.locked():  # the watch is ending the server (its kills broke LitServe's wait): its word stands
            end_the_server(1, "")
        workers = getattr(server, "inference_workers", None) or []
        if any(w.exitcode == LOAD_FAILED for w in workers if not w.is_alive()):  # LitServe saw the dead worker first
            end_the_server(1, "its model worker could not load the model (said above)")
        if isinstance(e, RuntimeError) and "failed to start" in str(e):
            end_the_server(1, f"its model worker did not start ({e})")
        raise


def die_with_parent(parent: int) -> None:
    """On Linux, this process (a child of process ``parent``) gets SIGTERM when its parent
    dies, even by SIGKILL (the OOM killer, ``kill -9``), which no handler of the server sees:
    before, the server's worker and helpers lived on, one of them holding the port without
    answering. A parent already gone (a spawned worker takes seconds to get here) ends this
    process at once, whoever adopted it (init, or a subreaper such as ``systemd --user``).
    Called in the parent itself (an API set up in-process) or elsewhere than Linux: nothing."""
    if not sys.platform.startswith("linux") or os.getpid() == parent:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(128 + signal.SIGTERM)


def fail(message: str) -> NoReturn:
    """A start-up error in one line (argparse's ``parser.error`` prints the whole usage first), exit 2."""
    print(f"python -m lit_vr1.rewards.serve: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_judge_model(model: str) -> None:
    """A judge model that cannot be loaded, named in one line before the worker starts (it
    printed two tracebacks after uvicorn's "running on")."""
    from lit_vr1.models.loading import ModelLoadError, _tiny_family, check_model_type

    try:
        if _tiny_family(model) is None:
            check_model_type(model)
    except ModelLoadError as e:
        fail(f"--model: {e}")


STOPPING = threading.Event()  # set by a SIGTERM / SIGINT: the worker's end is then expected
LOAD_FAILED = 3  # a model worker's exit status when its model did not load (said in its own line)


def stop_when_the_worker_dies(server: ls.LitServer, every_s: float = 1.0) -> None:
    """A model worker that dies (the OOM killer, ``kill -9``), loading or serving, stops the
    server with exit 1, so a supervisor restarts it: LitServe's own monitor tried to stop the
    server's thread, failed, and left it on the port answering 500 to every request (and a
    worker killed while loading left the server waiting for it for ever)."""
    def watch() -> None:
        while not getattr(server, "inference_workers", None):  # LitServe starts them in run()
            time.sleep(every_s)
        while True:
            dead = [w for w in server.inference_workers if not w.is_alive()]
            if dead and not STOPPING.is_set():  # (a SIGTERM to the group ends the worker too: stop() exits)
                w = dead[0]
                if w.exitcode == LOAD_FAILED:
                    end_the_server(1, "its model worker could not load the model (said above)")
                how = f"signal {-w.exitcode}" if (w.exitcode or 0) < 0 else f"exit status {w.exitcode}"
                end_the_server(1, f"its model worker (pid {w.pid}) died ({how}; the OOM killer?); the server stops "
                                  "so that it can be started again")
            time.sleep(every_s)

    threading.Thread(target=watch, name="lit-vr1-worker-watch", daemon=True).start()


def refuse_a_taken_port(host: str, port: int) -> None:
    """Say who may hold the port when it is taken (uvicorn's "Address already in use", exit 3)."""
    try:
        try_binding(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            fail(f"--port {port}: {host}:{port} is taken ({e.strerror}); another server holds it, maybe an "
                 f"earlier judge (`ss -ltnp | grep :{port}` names the process), or choose another --port")
        fail(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); give an address of this "
             "machine (127.0.0.1, 0.0.0.0, ::) and a port above 1023")


def try_binding(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will, and let it go: an ``OSError`` when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


ENDING = threading.Lock()  # held by the one thread that ends the server (the watch, or main after LitServe gave up)


def end_the_server(code: int, why: str) -> NoReturn:
    """Kill the server's worker processes, wait for them, say why and exit with ``code``. Once:
    a second thread that comes here waits for the first's exit."""
    if not ENDING.acquire(blocking=False):
        while True:
            time.sleep(1)
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError):
            child.kill()
    for child in multiprocessing.active_children():
        child.join(timeout=5)
    print(f"lit-vr1 judge server: {why}", file=sys.stderr, flush=True)
    os._exit(code)


def stop_workers_with_the_server() -> None:
    """SIGTERM and SIGINT stop the server and its LitServe worker processes at once. Left to
    themselves, a SIGTERM ended the main process and left its worker (the model) listening on
    the port, and a Ctrl-C to the process group ended the worker first and left the main
    process answering /health with errors, the port held."""

    def stop(signum, frame) -> None:
        STOPPING.set()
        end_the_server(128 + signum, f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


if __name__ == "__main__":
    main()
