"""Label-free rewards from a judge model, in-process or behind an HTTP service.

R1V-Free (Cheng et al., 2025, github.com/Exgc/R1V-Free) trains a Qwen-VL policy with
GRPO on open-ended visual questions (RLHF-V prompts) that have no reference answer.
Instead of comparing with a label, the answer is taken out of the completion's
``<answer>`` tags and a separate multimodal reward model (InternLM-XComposer-2.5-7B-Reward,
which returns one scalar per (question, answer, image) conversation) judges it; the
public training script turns the scalar into a 0/1 accuracy reward (positive score ->
1) and adds the usual think/answer format reward. We found no more detail than that
(the paper's ablations, any score normalisation) in the sources we could read.

Here the judge is a generative vision-language model asked a yes/no question:
:class:`JudgeScorer` shows the image, the question and the candidate answer and reads
the probability of "yes" against "no" for the next token, giving a score in [0, 1].
With a real checkpoint as judge (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``) this is the
R1V-Free set-up in spirit: AI feedback on (question, extracted answer, image) and no
labels; ``threshold`` turns the score into R1V-Free's 0/1 reward.

* :class:`RewardModelReward` runs the judge in the training process (it is built
  lazily, once, on first use).
* :class:`RemoteRewardModel` asks a judge served by ``python -m lit_vr1.rewards.serve``
  (see that module for the protocol), so a large judge can live on its own GPU/host.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import answer_text

DEFAULT_JUDGE_PROMPT = (
    "Question: {question}\n"
    "Candidate answer: {answer}\n"
    "Looking at the image, is the candidate answer a correct and complete answer to the question? "
    'Reply with one word: "yes" or "no".'
)


@dataclass
class ScoreItem:
    """One thing to judge: the question, the extracted answer and the image (or None)."""

    question: str
    answer: str
    image: Image.Image | None = None


def items_for(completions: list[str], contexts: list[SampleContext]) -> list[ScoreItem]:
    """(prompt, answer in the last <answer> tags, first image) of each completion."""
    return [ScoreItem(ctx.prompt, answer_text(comp).strip(), ctx.images[0] if ctx.images else None)
            for comp, ctx in zip(completions, contexts)]


def _as_words(token: str | Sequence[str]) -> list[str]:
    words = [token] if isinstance(token, str) else list(token)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"yes/no tokens must be non-empty strings, got {token!r}")
    return words


class JudgeScorer:
    """A vision-language model used as a yes/no judge.

    The prompt (``prompt_template`` with ``{question}`` and ``{answer}``, preceded by the
    image when there is one) goes through the model's chat template with the generation
    prompt; the score is p(yes) / (p(yes) + p(no)) of the first answer token, computed
    as sigmoid(logsumexp(yes logits) - logsumexp(no logits)), so it lies in [0, 1].

    Args:
        model: a name or path for :func:`lit_vr1.models.loading.load_model` (real
            checkpoint, local directory, or ``tiny:qwen2_5_vl``), or an already loaded
            model (then ``processor`` is required).
        device, dtype: where and in which precision the judge runs.
        batch_size: items per forward pass.
        prompt_template: the question put to the judge.
        yes_token, no_token: the word (or words, e.g. ``["yes", "Yes"]``, whose
            probabilities are summed) meaning yes / no. A word the tokenizer splits is
            represented by its first token; the yes and no tokens must differ.
        min_pixels, max_pixels: image size bounds of the processor.
        processor: the processor of an already loaded ``model``.
    """

    def __init__(self, model: Any, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 prompt_template: str = DEFAULT_JUDGE_PROMPT, yes_token: str | Sequence[str] = "yes",
                 no_token: str | Sequence[str] = "no", min_pixels: int | None = None, max_pixels: int | None = None,
                 attn_implementation: str = "sdpa", seed: int = 0, processor: Any = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if "{question}" not in prompt_template or "{answer}" not in prompt_template:
            raise ValueError("prompt_template must contain {question} and {answer}")
        self.prompt_template = prompt_template
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        if isinstance(model, str):
            from lit_vr1.models.loading import load_model, load_processor

            self.model_name = model
            self.processor = load_processor(model, min_pixels=min_pixels, max_pixels=max_pixels, seed=seed)
            self.model = load_model(model, self.processor, dtype=dtype, attn_implementation=attn_implementation, seed=seed)
        else:
            if processor is None:
                raise ValueError("JudgeScorer: pass `processor` together with an already loaded model")
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            self.processor, self.model = processor, model
        self.model.to(self.device).eval()
        self.yes_ids = self._token_ids(_as_words(yes_token))
        self.no_ids = self._token_ids(_as_words(no_token))
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"yes_token {yes_token!r} and no_token {no_token!r} share a first token "
                             f"under this tokenizer; choose other words")

    def _token_ids(self, words: list[str]) -> list[int]:
        tok = self.processor.tokenizer
        ids = []
        for w in words:
            enc = tok(w, add_special_tokens=False).input_ids
            if not enc:
                raise ValueError(f"the tokenizer encodes {w!r} to no tokens")
            if enc[0] not in ids:
                ids.append(enc[0])
        return ids

    def _texts(self, items: list[ScoreItem]) -> list[str]:
        texts = []
        for it in items:
            content: list[dict[str, str]] = [{"type": "image"}] if it.image is not None else []
            content.append({"type": "text", "text": self.prompt_template.format(question=it.question, answer=it.answer)})
            messages = [{"role": "user", "content": content}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return texts

    @torch.no_grad()
    def _score_batch(self, items: list[ScoreItem]) -> list[float]:
        images = [it.image.convert("RGB") for it in items if it.image is not None]
        enc = self.processor(text=self._texts(items), images=images or None, padding=True, padding_side="left",
                             return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
        yes = torch.logsumexp(logits[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logits[:, self.no_ids], dim=-1)
        return torch.sigmoid(yes - no).cpu().tolist()

    def score(self, items: list[ScoreItem]) -> list[float]:
        """p(yes) / (p(yes) + p(no)) of each item, in batches of ``batch_size``."""
        if self.model.training:
            self.model.eval()
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(self._score_batch(items[start:start + self.batch_size]))
        return out


def _binarised(scores: list[float], threshold: float | None) -> list[float]:
    if threshold is None:
        return scores
    return [s if math.isnan(s) else float(s >= threshold) for s in scores]


class RewardModelReward(Reward):
    """The judge's score of (question, answer in <answer> tags, first image), in-process.

    Args:
        model, device, dtype, batch_size, prompt_template, yes_token, no_token,
            min_pixels, max_pixels: as for :class:`JudgeScorer`, built on first use.
        threshold: None: the score in [0, 1] is the reward; a number: 1.0 when the score
            is at least this, else 0.0 (R1V-Free's binarised reward).
        scorer: an already built :class:`JudgeScorer` to use instead (shares a model).
        **kwargs: weight, name, tasks, on_error of :class:`Reward`.
    """

    default_name = "reward_model"
    rescore_singly = False  # a failed batch is not re-sent completion by completion

    def __init__(self, model: str = "", device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 prompt_template: str = DEFAULT_JUDGE_PROMPT, yes_token: str | Sequence[str] = "yes",
                 no_token: str | Sequence[str] = "no", min_pixels: int | None = None, max_pixels: int | None = None,
                 threshold: float | None = None, scorer: JudgeScorer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scorer is None and not model:
            raise ValueError("RewardModelReward needs `model` (a name or path) or a built `scorer`")
        self.threshold = threshold
        self._scorer = scorer
        self._scorer_args = dict(model=model, device=device, dtype=dtype, batch_size=batch_size,
                                 prompt_template=prompt_template, yes_token=yes_token, no_token=no_token,
                                 min_pixels=min_pixels, max_pixels=max_pixels)

    @property
    def scorer(self) -> JudgeScorer:
        if self._scorer is None:
            self._scorer = JudgeScorer(**self._scorer_args)
        return self._scorer

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return _binarised(self.scorer.score(items_for(completions, contexts)), self.threshold)


class RemoteRewardError(RuntimeError):
    """A request to the remote reward model failed after all its attempts."""


class _Transport(Exception):
    """Timeout or connection failure: the server is not answering at all."""


class _BadAnswer(Exception):
    """The server answered, but with an HTTP error or a body that is not valid scores."""


def encode_image(image: Image.Image | None, fmt: str = "PNG") -> str | None:
    """An image as base64 (PNG by default) for the JSON protocol; None stays None."""
    if image is None:
        return None
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_scores(body: bytes, count: int) -> list[float]:
    """The ``scores`` of a response body, checked: a JSON object, ``count`` numbers."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _BadAnswer(f"response is not JSON ({e}): {body[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), list):
        raise _BadAnswer(f"response has no list `scores`: {str(data)[:200]}")
    scores = data["scores"]
    if len(scores) != count:
        raise _BadAnswer(f"response has {len(scores)} scores for {count} items")
    bad = [s for s in scores if isinstance(s, bool) or not isinstance(s, (int, float))]
    if bad:
        raise _BadAnswer(f"response scores are not all numbers, e.g. {bad[0]!r}")
    return [float(s) for s in scores]


class RemoteRewardModel(Reward):
    """Scores of (question, answer in <answer> tags, first image) from a judge served over
    HTTP (``python -m lit_vr1.rewards.serve``). Standard library only (``http.client``).

    Each batch of ``batch_size`` completions is one ``POST url`` with JSON
    ``{"items": [{"question", "answer", "image": base64 PNG or null}]}``, answered by
    ``{"scores": [one number per item]}``.

    Failures (timeout, refused connection, HTTP error status, a body that is not JSON or
    has the wrong count or non-numbers) are retried up to ``max_retries`` times,
    ``backoff_s`` apart; then :class:`RemoteRewardError` names the url, the attempts and
    the last cause (the base class makes it a ``RewardError`` naming the sample, or nan
    with ``on_error="nan"``). Every attempt has a hard deadline of ``timeout_s`` (connect,
    send and the whole read, not per socket operation), so one request takes at most
    ``(max_retries + 1) * timeout_s + max_retries * backoff_s``.

    When a request ends on a timeout or connection failure, the server is taken as down
    for ``down_for_s`` seconds: requests in that window fail at once with the same cause.
    Without this, the base class's one-by-one search for the failing sample would
    retry, with timeouts, once per completion.

    Args:
        url: the scoring endpoint, e.g. ``http://127.0.0.1:8000/score``.
        timeout_s, max_retries, backoff_s: as above.
        batch_size: items per request.
        threshold: as for :class:`RewardModelReward`.
        down_for_s: see above (0 turns it off).
        **kwargs: weight, name, tasks, on_error of :class:`Reward`.
    """

    default_name = "reward_model"
    rescore_singly = False  # a failed batch is not re-sent completion by completion

    def __init__(self, url: str, timeout_s: float = 30.0, max_retries: int = 2, backoff_s: float = 0.5,
                 batch_size: int = 16, threshold: float | None = None, down_for_s: float = 10.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"RemoteRewardModel: url {url!r} is not an http(s) URL")
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or batch_size < 1:
            raise ValueError("RemoteRewardModel: need timeout_s > 0, max_retries >= 0, backoff_s >= 0, batch_size >= 1")
        self.url = url
        self._parts = parts
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.batch_size = int(batch_size)
        self.threshold = threshold
        self.down_for_s = float(down_for_s)
        self.attempts = 0  # HTTP attempts made, over the whole run
        self._down: tuple[float, str] | None = None  # (until, message) after a transport failure

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        cache: dict[int, str | None] = {}  # the completions of one prompt share its image

        def image(img: Image.Image | None) -> str | None:
            if img is None:
                return None
            if id(img) not in cache:
                cache[id(img)] = encode_image(img)
            return cache[id(img)]

        items = [{"question": it.question, "answer": it.answer, "image": image(it.image)}
                 for it in items_for(completions, contexts)]
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(self.request(items[start:start + self.batch_size]))
        return _binarised(out, self.threshold)

    def request(self, items: list[dict[str, Any]]) -> list[float]:
        """Scores of one batch of protocol items, with retries (see the class docstring)."""
        if self._down is not None:
            until, message = self._down
            if time.monotonic() < until:
                raise RemoteRewardError(f"{message} (not retried: server taken as down for "
                                        f"{until - time.monotonic():.1f} s more)")
            self._down = None
        body = json.dumps({"items": items}).encode("utf-8")
        attempts, cause = 0, None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s)
            attempts += 1
            self.attempts += 1
            try:
                return parse_scores(self._post(body), len(items))
            except (_Transport, _BadAnswer) as e:
                cause = e
        message = (f"remote reward model {self.url} failed after {attempts} attempt(s); "
                   f"last cause: {cause}")
        if isinstance(cause, _Transport) and self.down_for_s > 0:
            self._down = (time.monotonic() + self.down_for_s, message)
        raise RemoteRewardError(message)

    def _post(self, body: bytes) -> bytes:
        """One POST with a deadline of ``timeout_s`` on the whole exchange."""
        p = self._parts
        deadline = time.monotonic() + self.timeout_s

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline passed")
            return remaining

        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = cls(p.hostname, p.port, timeout=self.timeout_s)
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        try:
            conn.connect()
            sock = conn.sock  # kept: the response reads from it even after conn lets go of it
            sock.settimeout(left())
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            sock.settimeout(left())
            resp = conn.getresponse()
            chunks = []
            while True:
                sock.settimeout(left())
                chunk = resp.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                left()
            data = b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:  # socket.timeout is an OSError
            kind = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else "connection failed"
            raise _Transport(f"{kind} ({type(e).__name__}: {e or 'no detail'}) [timeout_s={self.timeout_s}]") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise _BadAnswer(f"HTTP {resp.status} {resp.reason}: {data[:200]!r}")
        return data
