"""Serve a :class:`~lit_vr1.rewards.reward_model.JudgeScorer` over HTTP (standard library only).

    python -m lit_vr1.rewards.serve --model Qwen/Qwen2.5-VL-7B-Instruct --host 127.0.0.1 --port 8000 \\
        --device cuda:0 --batch-size 16

Protocol (what :class:`~lit_vr1.rewards.reward_model.RemoteRewardModel` speaks):

* ``POST /score`` with ``{"items": [{"question": str, "answer": str, "image": base64 image or null}]}``
  -> ``200 {"scores": [float in [0, 1], one per item]}``;
* ``GET /health`` -> ``200 {"status": "ok", "model": name}``;
* a body that is not such JSON -> ``400 {"error": message}``; a scoring failure -> ``500 {"error": ...}``.

Requests are served in threads, but scoring holds one lock: one model, one batch at a time.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, UnidentifiedImageError

from lit_vr1.rewards.reward_model import JudgeScorer, ScoreItem

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024


class BadRequest(ValueError):
    """The request body is not a valid scoring request; the message says why."""


def parse_items(body: bytes) -> list[ScoreItem]:
    """The items of a ``POST /score`` body, or :class:`BadRequest`."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise BadRequest('body must be a JSON object with a list "items"')
    items = []
    for i, raw in enumerate(data["items"]):
        if not isinstance(raw, dict):
            raise BadRequest(f"items[{i}] is not an object")
        question, answer, image = raw.get("question"), raw.get("answer"), raw.get("image")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise BadRequest(f'items[{i}] needs string "question" and "answer"')
        if image is not None:
            if not isinstance(image, str):
                raise BadRequest(f'items[{i}].image must be a base64 string or null')
            try:
                image = Image.open(io.BytesIO(base64.b64decode(image, validate=True)))
                image.load()
                image = image.convert("RGB")
            except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as e:
                raise BadRequest(f"items[{i}].image is not a base64-encoded image: {e}") from None
        items.append(ScoreItem(question, answer, image))
    return items


class ScoreServer(ThreadingHTTPServer):
    """A threading HTTP server holding the scorer, its lock and request counters."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], scorer: JudgeScorer, model_name: str | None = None) -> None:
        super().__init__(address, ScoreHandler)
        self.scorer = scorer
        self.model_name = model_name or getattr(scorer, "model_name", "") or type(scorer).__name__
        self.lock = threading.Lock()  # one model: one batch at a time
        self.requests = 0  # POST /score requests scored
        self.items = 0  # items scored

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class ScoreHandler(BaseHTTPRequestHandler):
    server: ScoreServer
    server_version = "lit-vr1-reward/1"

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "model": self.server.model_name})
        else:
            self._send(404, {"error": f"no such path {self.path!r}; use POST /score or GET /health"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no such path {self.path!r}; use POST /score"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "a Content-Length header is required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(413, {"error": f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}"})
            return
        try:
            items = parse_items(self.rfile.read(length))
        except BadRequest as e:
            self._send(400, {"error": str(e)})
            return
        try:
            with self.server.lock:
                scores = self.server.scorer.score(items) if items else []
                self.server.requests += 1
                self.server.items += len(items)
        except Exception as e:  # noqa: BLE001 - report to the client, keep serving
            log.exception("scoring failed")
            self._send(500, {"error": f"scoring failed: {type(e).__name__}: {e}"})
            return
        self._send(200, {"scores": [float(s) for s in scores]})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s - %s", self.address_string(), format % args)


def make_server(scorer: JudgeScorer, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None) -> ScoreServer:
    """A server bound to (host, port) (port 0: an ephemeral one, see ``server.server_address``);
    run it with ``serve_forever()`` (e.g. in a thread), stop it with ``shutdown()`` then
    ``server_close()``."""
    return ScoreServer((host, port), scorer, model_name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_vr1.rewards.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="judge model: name, path, or tiny:qwen2_5_vl")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    parser.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    scorer = JudgeScorer(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    server = make_server(scorer, args.host, args.port, model_name=args.model)
    log.info("judge %s on %s: POST %s/score, GET %s/health", args.model, args.device, server.url, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
