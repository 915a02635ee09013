"""Rollouts: G sampled completions per prompt, kept as one typed batch.

Shapes: ``N`` completions (prompts x G, a prompt's G completions next to each other),
``P`` prompt tokens (left-padded), ``T`` completion tokens (right-padded),
``I`` images in the batch, ``X`` rows of ``pixel_values`` of all images together (Qwen-VL:
flattened patches; InternVL: tiles). What differs between model families (vision tensor
layout, input image sizes, placeholder tokens) comes from :mod:`lit_vr1.models.families`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

from lit_vr1 import prefix
from lit_vr1.data.jsonl import Sample
from lit_vr1.loss import sampling_logits, token_logprobs
from lit_vr1.models import families
from lit_vr1.models.families.qwen2_vl import GridImages
from lit_vr1.rewards.base import SampleContext


@dataclass
class SamplingConfig:
    """How completions are drawn. top_k=0 and top_p=1.0 switch those filters off;
    ``greedy`` decodes the argmax (evaluation). ``suppress_ids`` are tokens never
    generated (image and video placeholders: one in a completion would break the
    image-token count of the next forward)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_completion_length: int = 64
    greedy: bool = False
    suppress_ids: tuple[int, ...] = ()

    def scoring(self) -> SamplingConfig:
        """The distribution the loss scores these samples under: the same temperature and
        suppressed tokens, without top-k / top-p (every sampled token keeps a finite log-prob
        under any weights, and the reference is scored under the same distribution; see
        ``GRPOConfig``)."""
        return SamplingConfig(temperature=self.temperature, max_completion_length=self.max_completion_length,
                              suppress_ids=self.suppress_ids)


@dataclass
class Rollout:
    """One batch of sampled completions and everything the update needs.

    prompt: processor outputs, one row per PROMPT (each prompt is encoded once, not G
        times): input_ids, attention_mask and (Qwen-VL) mm_token_type_ids (P, Lp);
        pixel_values (X, ...); (Qwen-VL) image_grid_thw (I, 3).
    images_per_row: (P,) number of images of each prompt row (to slice pixel_values).
    group_size: G; completion row r belongs to prompt row r // G.
    image_rows: (I,) rows of pixel_values each image owns (None: read from image_grid_thw).
    completion_ids: (N, T) sampled tokens, pad after EOS.
    completion_mask: (N, T) 1 on sampled tokens up to and including EOS.
    truncated: (N,) True where no EOS came within max_completion_length.
    completions: N decoded completion texts (special tokens stripped).
    contexts: N reward contexts, one per completion.
    sampling_logprobs: (N, T) log-prob of each sampled token under the distribution
        generate sampled from (only when asked for; a correctness check).
    old_logprobs, ref_logprobs: (N, T), filled by the loop when needed.
    advantages: (N,), filled by the loop.
    """

    prompt: dict[str, Tensor]
    images_per_row: list[int]
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    completions: list[str]
    contexts: list[SampleContext]
    sampling_logprobs: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None
    image_rows: list[int] | None = None
    group_size: int = 1
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def prompt_index(self, rows: Tensor) -> Tensor:
        """Prompt row of each completion row in ``rows``."""
        return torch.div(rows, self.group_size, rounding_mode="floor")

    def model_inputs(self, rows: Tensor | slice | None = None) -> dict[str, Tensor]:
        """Forward inputs (prompt + completion) for the given rows, all rows by default."""
        rows = torch.arange(len(self)) if rows is None else torch.arange(len(self))[rows] if isinstance(rows, slice) else rows
        prompt = select_rows(self.prompt, self.images_per_row, self.prompt_index(rows), self.image_rows)
        comp = self.completion_ids[rows]
        out = dict(prompt)
        out["input_ids"] = torch.cat([prompt["input_ids"], comp], dim=1)
        comp_mask = self.completion_mask[rows].to(prompt["attention_mask"].dtype)
        out["attention_mask"] = torch.cat([prompt["attention_mask"], comp_mask], dim=1)
        if "mm_token_type_ids" in prompt:
            out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(comp)], dim=1)
        return out


def select_rows(inputs: dict[str, Tensor], images_per_row: list[int], rows: Tensor,
                image_rows: list[int] | None = None) -> dict[str, Tensor]:
    """Rows of a processor batch, with the vision tensors of exactly those rows' images.

    ``pixel_values`` holds the rows of all images one after another (Qwen-VL: patches,
    ``image_grid_thw`` one (t, h, w) row per image; InternVL: tiles); ``image_rows`` says
    how many rows each image owns (see :func:`image_layout`). Without it the counts are
    read from ``image_grid_thw``, which InternVL batches do not have.
    """
    if image_rows is None:
        if "pixel_values" in inputs and "image_grid_thw" not in inputs:
            raise ValueError("select_rows: this batch's pixel_values have no image_grid_thw (InternVL tiles); "
                             "pass image_rows, the pixel_values rows of each image (see image_layout)")
        image_rows = GridImages().pixel_rows(inputs)
    return families.select_rows(inputs, images_per_row, rows, image_rows)


def image_layout(processor: ProcessorMixin, inputs: dict[str, Tensor],
                 image_sizes: list[tuple[int, int]]) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """(pixel_values rows of each image, (width, height) of each image at the model input)
    of a processor batch, by the processor's model family; ``image_sizes`` are the images'
    original (width, height). (None, []) for a batch without images."""
    if "pixel_values" not in inputs:
        return None, []
    images = families.family_of(processor).images
    return images.pixel_rows(inputs, processor), images.input_sizes(inputs, image_sizes, processor)


def encode_prompts(processor: ProcessorMixin, samples: list[Sample], repeat: int = 1) -> tuple[dict[str, Tensor], list[int]]:
    """Processor batch (left-padded) of each sample repeated ``repeat`` times in a row."""
    texts, images, per_row = [], [], []
    for s in samples:
        text = processor.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=False)
        for _ in range(repeat):
            texts.append(text)
            images.extend(s.images)
            per_row.append(len(s.images))
    enc = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
    return dict(enc), per_row


def input_sizes(grid: Tensor, patch_size: int = 14) -> list[tuple[int, int]]:
    """(width, height) each image had at the model input, from its (t, h, w) patch grid."""
    return [(int(w) * patch_size, int(h) * patch_size) for _, h, w in grid.tolist()]


def teacher_forced(processor: ProcessorMixin, samples: list[Sample], answers: list[str],
                   device: torch.device | str = "cpu") -> Rollout:
    """A rollout whose completions are given texts (each followed by the end-of-turn token):
    the prompts are encoded exactly as for generation, the answers tokenised on their own,
    as generation produces them. Used by SFT."""
    prompt, per_row = encode_prompts(processor, samples)
    image_rows, _ = image_layout(processor, prompt, [size for s in samples for size in s.image_sizes])
    tok = processor.tokenizer
    family = families.find_family(processor)
    end = family.end_of_turn if family is not None else "<|im_end|>"
    eos = tok.convert_tokens_to_ids(end) if end in tok.get_vocab() else tok.eos_token_id
    ids = [tok(a, add_special_tokens=False).input_ids + [eos] for a in answers]
    width = max(len(x) for x in ids)
    comp = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        comp[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    prompt = {k: v.to(device) for k, v in prompt.items()}
    return Rollout(prompt=prompt, images_per_row=per_row, completion_ids=comp.to(device), completion_mask=mask.to(device),
                   truncated=torch.zeros(len(ids), dtype=torch.bool, device=device), completions=list(answers), contexts=[],
                   image_rows=image_rows)


@contextlib.contextmanager
def _only_config(model: PreTrainedModel, config: GenerationConfig):
    """Generate with exactly ``config``: transformers fills unset fields from the model's
    own generation_config (e.g. a checkpoint's repetition_penalty or top_k), which would
    sample from another distribution than the one the loss scores."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def generation_config(cfg: SamplingConfig, processor: ProcessorMixin, eos_token_id: int | list[int]) -> GenerationConfig:
    tok = processor.tokenizer
    common = dict(
        max_new_tokens=cfg.max_completion_length,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos_token_id,
        repetition_penalty=1.0,
        suppress_tokens=list(cfg.suppress_ids) or None,
        use_cache=True,
    )
    if cfg.greedy:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, **common)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    samples: list[Sample],
    num_generations: int,
    cfg: SamplingConfig,
    *,
    global_step: int = 0,
    with_sampling_logprobs: bool = False,
    shared_prompt: bool = True,
    box_frame: str | None = None,
) -> Rollout:
    """Sample ``num_generations`` completions for each sample, as one :class:`Rollout`.

    Every context carries ``box_frame``, the frame the policy writes boxes in (None: its
    model family's), for the box rewards that do not name their own.

    Each prompt is encoded by the processor once. With ``shared_prompt`` (and a model
    :mod:`lit_vr1.prefix` supports) its images are encoded once and its prefill runs once
    for all G completions, and the image features are kept in ``extras["image_features"]``
    for the training passes; otherwise the prompt rows are repeated G times for
    transformers' ``generate``.
    """
    device = next(model.parameters()).device
    prompt, per_prompt = encode_prompts(processor, samples)
    prompt = {k: v.to(device) for k, v in prompt.items()}
    image_rows, sizes = image_layout(processor, prompt, [size for s in samples for size in s.image_sizes])
    eos = model.generation_config.eos_token_id or processor.tokenizer.eos_token_id
    eos_list = [eos] if isinstance(eos, int) else list(eos)
    pad = processor.tokenizer.pad_token_id
    extras = {}
    if shared_prompt and prefix.unsupported_reason(model) is None:
        features = prefix.image_features(model, prompt, per_prompt)
        out = prefix.sample(model, prompt, num_generations, cfg, eos_list, pad, features, with_sampling_logprobs)
        comp, mask, has_eos, sampling_lp = out.completion_ids, out.mask, out.has_eos, out.logprobs
        extras["image_features"] = features
    else:
        comp, mask, has_eos, sampling_lp = _transformers_generate(model, processor, prompt, per_prompt, image_rows,
                                                                  num_generations, cfg, eos, with_sampling_logprobs)
    texts = processor.batch_decode(comp, skip_special_tokens=True)
    frame = box_frame or families.family_of(processor).box_frame
    contexts, lengths = [], mask.sum(dim=1).tolist()
    first_image = [sum(per_prompt[:i]) for i in range(len(per_prompt))]
    for row in range(comp.shape[0]):
        p = row // num_generations
        s = samples[p]
        prompt_text = next(i["text"] for i in s.messages[-1]["content"] if i["type"] == "text")
        contexts.append(
            SampleContext(
                id=s.id, prompt=prompt_text, solution=s.solution, images=s.images, image_sizes=s.image_sizes,
                input_sizes=sizes[first_image[p]:first_image[p] + per_prompt[p]], metadata=s.metadata,
                completion_length=int(lengths[row]), truncated=not bool(has_eos[row]), global_step=global_step,
                task=s.task, source=s.source, box_frame=frame,
            )
        )
    return Rollout(
        prompt=prompt, images_per_row=per_prompt, completion_ids=comp, completion_mask=mask,
        truncated=~has_eos, completions=texts, contexts=contexts, sampling_logprobs=sampling_lp, image_rows=image_rows,
        group_size=num_generations, extras=extras,
    )


def _transformers_generate(model, processor, prompt, per_prompt, image_rows, group_size: int, cfg: SamplingConfig,
                           eos, with_sampling_logprobs: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """transformers' ``generate`` over the prompt rows repeated ``group_size`` times:
    (completion ids, mask, has_eos, sampling log-probs or None)."""
    index = torch.arange(len(per_prompt)).repeat_interleave(group_size)
    rows = prefix.prompt_rows(prompt, per_prompt, index, image_rows)
    gen_cfg = generation_config(cfg, processor, eos)
    with _only_config(model, gen_cfg):
        out = model.generate(**rows, output_scores=with_sampling_logprobs, return_dict_in_generate=True)
    comp, mask, has_eos = prefix.end_at_eos(out.sequences[:, rows["input_ids"].shape[1]:],
                                            [eos] if isinstance(eos, int) else list(eos), processor.tokenizer.pad_token_id)
    sampling_lp = None
    if with_sampling_logprobs:
        scores = torch.stack(out.scores, dim=1).float()  # (N, T, V), after the logits warpers
        sampling_lp = token_logprobs(scores.log_softmax(-1), comp).masked_fill(mask == 0, 0.0)
    return comp, mask, has_eos, sampling_lp


def completion_logits(model: PreTrainedModel, inputs: dict[str, Tensor], completion_len: int) -> Tensor:
    """Logits that predict each completion token: (n, T, V). Only the last T+1 positions go
    through the LM head (``logits_to_keep``), the prompt's logits are never built."""
    out = model(**inputs, use_cache=False, logits_to_keep=completion_len + 1)
    return out.logits[:, :-1, :]


def distribution_logits(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """The raw logits turned into those of the distribution ``cfg`` samples from."""
    return sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.suppress_ids)


def policy_logprobs(logits: Tensor, tokens: Tensor, cfg: SamplingConfig) -> Tensor:
    """float32 log-probs of ``tokens`` under the distribution ``cfg`` describes (the loss passes
    ``SamplingConfig.scoring()``)."""
    return token_logprobs(distribution_logits(logits, cfg), tokens)


VISION_TOKENS = families.QWEN2_5_VL.vision_tokens  # Qwen-VL's; each family lists its own


def vision_token_ids(processor: ProcessorMixin) -> tuple[int, ...]:
    """Ids of the vision placeholder tokens of the processor's model family that the
    tokenizer knows (never to be generated); every family's, for an unknown processor."""
    family = families.find_family(processor)
    tokens = family.vision_tokens if family is not None else tuple(
        dict.fromkeys(t for f in families.FAMILIES.values() for t in f.vision_tokens))
    vocab = processor.tokenizer.get_vocab()
    return tuple(sorted(vocab[t] for t in tokens if t in vocab))
