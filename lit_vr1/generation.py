"""Generation: encode the prompts, sample G completions per prompt, return a :class:`Rollout`.

What differs between model families (vision tensor layout, input image sizes, placeholder
tokens, the end-of-turn token) comes from :mod:`lit_vr1.models.families`. With shared
prompts (Qwen-VL families) the sampler of :mod:`lit_vr1.shared_prompt` runs; otherwise
transformers' ``generate`` over prompt rows repeated G times.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

from lit_vr1 import shared_prompt
from lit_vr1.config import SamplingConfig
from lit_vr1.data.jsonl import Sample
from lit_vr1.loss import token_logprobs
from lit_vr1.models import families
from lit_vr1.rewards.base import SampleContext
from lit_vr1.rollout import Rollout


def encode_prompts(processor: ProcessorMixin, samples: list[Sample], repeat: int = 1) -> tuple[dict[str, Tensor], list[int]]:
    """Processor batch (left-padded) of each sample repeated ``repeat`` times in a row, and
    the number of images of each row."""
    texts, images, per_row = [], [], []
    for s in samples:
        text = processor.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=False)
        for _ in range(repeat):
            texts.append(text)
            images.extend(s.images)
            per_row.append(len(s.images))
    enc = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
    return dict(enc), per_row


def image_layout(processor: ProcessorMixin, inputs: dict[str, Tensor],
                 image_sizes: list[tuple[int, int]]) -> tuple[list[int] | None, list[tuple[int, int]]]:
    """(pixel_values rows of each image, (width, height) of each image at the model input)
    of a processor batch, by the processor's model family; ``image_sizes`` are the images'
    original (width, height). (None, []) for a batch without images."""
    if "pixel_values" not in inputs:
        return None, []
    images = families.family_of(processor).images
    return images.pixel_rows(inputs, processor), images.input_sizes(inputs, image_sizes, processor)


def end_of_turn_id(processor: ProcessorMixin) -> int:
    """The token that ends an assistant turn for the processor's family (``<|im_end|>`` for
    an unknown one), or the tokenizer's EOS when the vocabulary lacks it."""
    family = families.find_family(processor)
    end = family.end_of_turn if family is not None else "<|im_end|>"
    tok = processor.tokenizer
    return tok.convert_tokens_to_ids(end) if end in tok.get_vocab() else tok.eos_token_id


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
    """transformers' GenerationConfig that samples exactly as ``cfg`` says."""
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
    shared: bool = True,
    box_frame: str | None = None,
) -> Rollout:
    """Sample ``num_generations`` completions for each sample, as one :class:`Rollout`
    scored under ``cfg.scoring()``.

    Every reward context carries ``box_frame``, the frame the policy writes boxes in (None:
    its model family's), for the box rewards that do not name their own.

    Each prompt is encoded by the processor once. With ``shared`` (and a model
    :mod:`lit_vr1.shared_prompt` supports) its images are encoded once and its prefill runs
    once for all G completions (and, with the vision tower frozen, the image features are
    kept for the training passes);
    otherwise the prompt rows are repeated G times for transformers' ``generate``.
    """
    device = next(model.parameters()).device
    prompt, per_prompt = encode_prompts(processor, samples)
    prompt = {k: v.to(device) for k, v in prompt.items()}
    image_rows, sizes = image_layout(processor, prompt, [size for s in samples for size in s.image_sizes])
    eos = model.generation_config.eos_token_id or processor.tokenizer.eos_token_id
    eos_list = [eos] if isinstance(eos, int) else list(eos)
    pad = processor.tokenizer.pad_token_id
    shared = shared and shared_prompt.unsupported_reason(model) is None
    features = None
    if shared:
        features = shared_prompt.image_features(model, prompt, per_prompt)
        out = shared_prompt.sample(model, prompt, num_generations, cfg, eos_list, pad, features, with_sampling_logprobs)
        comp, mask, has_eos, sampling_lp = out.completion_ids, out.mask, out.has_eos, out.logprobs
    else:
        index = torch.arange(len(per_prompt)).repeat_interleave(num_generations)
        rows = families.select_rows(prompt, per_prompt, index, image_rows or [])
        comp, mask, has_eos, sampling_lp = _transformers_generate(model, processor, rows, cfg, eos_list,
                                                                  with_sampling_logprobs)
    frame = box_frame or families.family_of(processor).box_frame
    lengths = mask.sum(dim=1).tolist()
    ids = comp.tolist()  # each completion's token ids for the rewards, cut at its end of turn below
    first_image = [sum(per_prompt[:i]) for i in range(len(per_prompt))]
    contexts = [SampleContext.of(samples[row // num_generations],
                                 input_sizes=sizes[first_image[p]:first_image[p] + per_prompt[p]],
                                 completion_length=int(lengths[row]), truncated=not bool(has_eos[row]),
                                 global_step=global_step, box_frame=frame,
                                 completion_ids=ids[row][:int(lengths[row])])
                for row in range(comp.shape[0]) for p in [row // num_generations]]
    return Rollout(
        prompt=prompt, images_per_row=per_prompt, completion_ids=comp, completion_mask=mask, truncated=~has_eos,
        completions=processor.batch_decode(comp, skip_special_tokens=True), contexts=contexts, scoring=cfg.scoring(),
        group_size=num_generations, image_rows=image_rows, shared_prompt=shared,
        # the training passes reuse them only while they hold for every model that scores the
        # rollout: the policy's tower (projector included) frozen, so the reference's is the same
        image_features=features if features is not None and shared_prompt.vision_frozen(model) else None,
        sampling_logprobs=sampling_lp,
    )


def _transformers_generate(model, processor, rows: dict[str, Tensor], cfg: SamplingConfig, eos: list[int],
                           with_sampling_logprobs: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """transformers' ``generate`` over the prompt ``rows`` (each prompt repeated G times):
    (completion ids, mask, has_eos, sampling log-probs or None)."""
    with _only_config(model, generation_config(cfg, processor, eos)):
        out = model.generate(**rows, output_scores=with_sampling_logprobs, return_dict_in_generate=True)
    comp, mask, has_eos = shared_prompt.end_at_eos(out.sequences[:, rows["input_ids"].shape[1]:], eos,
                                                   processor.tokenizer.pad_token_id)
    sampling_lp = None
    if with_sampling_logprobs:
        scores = torch.stack(out.scores, dim=1).float()  # (N, T, V), after the logits warpers
        sampling_lp = token_logprobs(scores.log_softmax(-1), comp).masked_fill(mask == 0, 0.0)
    return comp, mask, has_eos, sampling_lp
