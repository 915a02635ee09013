"""Model families (lit_vr1.models.families): each family's tiny model runs through the
processor, a forward and a GRPO step; freezing finds its tower; rows sliced out of a batch
score like the row encoded alone; the registry names the supported families."""

import copy
import math

import pytest
import torch
from helpers import LengthReward, fit
from lightning.pytorch import seed_everything

from lit_vr1.config import GRPOConfig
from lit_vr1.generation import encode_prompts, image_layout
from lit_vr1.grpo import GRPOModule
from lit_vr1.models.families import FAMILIES, family_for_model_type, family_of, select_rows
from lit_vr1.models.freeze import freeze_vision, vision_parts
from lit_vr1.models.loading import ModelLoadError, check_model_type, load_model, load_processor
from lit_vr1.models.tiny import build_tiny

NAMES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "internvl"]
BOX_FRAMES = {"qwen2_5_vl": "input_pixels", "qwen2_vl": "norm1000", "qwen3_vl": "norm1000", "internvl": "norm1000"}
CONFTEST = {"qwen2_5_vl": "tiny_qwen25", "qwen2_vl": "tiny_qwen2"}
_built = {}


@pytest.fixture
def tiny(request):
    """(model, processor) of a family's tiny model, built once per test session."""
    name = request.param
    if name in CONFTEST:
        return request.getfixturevalue(CONFTEST[name])
    if name not in _built:
        _built[name] = build_tiny(name, seed=0)
    return _built[name]


def _batch(samples):
    """Three rows whose images differ in size (the middle one twice as wide): InternVL cuts it
    into 2 tiles plus a thumbnail, Qwen gives it a wider patch grid; prompts differ in length."""
    wide = copy.copy(samples[1])
    wide.images = [samples[1].images[0].resize((2 * samples[1].images[0].width, samples[1].images[0].height))]
    return [samples[0], wide, samples[2]]


def test_registry_maps_model_types_and_names_the_supported_families(tmp_path):
    assert list(FAMILIES) == NAMES
    for name in NAMES:
        assert family_for_model_type(name) is FAMILIES[name] and FAMILIES[name].box_frame == BOX_FRAMES[name]
    with pytest.raises(ModelLoadError, match="supported families: qwen2_5_vl, qwen2_vl, qwen3_vl, internvl"):
        family_for_model_type("llava")
    with pytest.raises(ModelLoadError, match="-hf"):
        family_for_model_type("internvl_chat")  # the remote-code checkpoints: a hint to the native conversion
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ModelLoadError, match=r"type 'llava'.*supported families: qwen2_5_vl, qwen2_vl, qwen3_vl, internvl"):
        check_model_type(str(tmp_path))
    with pytest.raises(ModelLoadError, match="tiny:qwen3_vl, tiny:internvl"):
        load_processor("tiny:llava")


@pytest.mark.parametrize("tiny", NAMES, indirect=True)
def test_forward_and_freeze_vision_on_the_family_tower(tiny, samples):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    family = family_of(model)
    assert family_of(processor) is family and family.name == model.config.model_type
    tok = processor.tokenizer
    for t in family.vision_tokens:  # every placeholder is one token of the vocabulary
        assert t in tok.get_vocab() and len(tok(t, add_special_tokens=False).input_ids) == 1
    lora = family.lora_targets(model)  # 7 projections per decoder layer, nothing of the vision side
    assert len(lora) == 7 * model.config.text_config.num_hidden_layers
    assert all(n.startswith("model.language_model.layers.") for n in lora)

    tower, projector = vision_parts(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert tower and projector
    assert all(names[id(p)].startswith(family.vision_tower + ".") for p in tower)
    assert all(names[id(p)].startswith(family.vision_projector) for p in projector)
    assert freeze_vision(model) == sum(p.numel() for p in tower)

    inputs, per_row = encode_prompts(processor, samples[:2])
    image_rows, sizes = image_layout(processor, inputs, [s for x in samples[:2] for s in x.image_sizes])
    assert per_row == [1, 1] and sum(image_rows) == inputs["pixel_values"].shape[0] and len(sizes) == 2
    logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    logits.float().pow(2).mean().backward()
    assert all(not p.requires_grad and p.grad is None for p in tower)
    assert all(p.grad is not None for p in projector)  # the gradient still reaches the projector


@pytest.mark.parametrize("tiny", NAMES, indirect=True)
def test_row_slicing_gives_the_forward_of_the_row_encoded_alone(tiny, samples):
    model, processor = tiny
    batch = _batch(samples)
    inputs, per_row = encode_prompts(processor, batch)
    image_rows, sizes = image_layout(processor, inputs, [s for x in batch for s in x.image_sizes])
    assert image_rows[1] > image_rows[0] == image_rows[2]  # the wide image owns more pixel_values rows
    assert sizes[0][0] == sizes[0][1] and sizes[1][0] > sizes[1][1] == sizes[0][1]  # (width, height)
    with torch.no_grad():
        for r in (2, 1):  # after the wide image (padded row), and the wide image itself
            part = model(**select_rows(inputs, per_row, torch.tensor([r]), image_rows)).logits[0]
            alone_inputs, _ = encode_prompts(processor, [batch[r]])
            alone = model(**alone_inputs).logits[0]
            torch.testing.assert_close(part[-alone.shape[0]:], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_grpo_step_with_a_frozen_tower(name, samples):
    seed_everything(0)
    cfg = GRPOConfig(num_generations=2, max_completion_length=8, beta=0.04, gradient_clip_val=None)
    module = GRPOModule(model=f"tiny:{name}", rewards=[LengthReward()], grpo=cfg, seed=0, freeze_vision=True,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    logger = fit(module, samples[:2], max_steps=1)
    changed = {n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])}
    tower = FAMILIES[name].vision_tower + "."
    projector = FAMILIES[name].vision_projector
    assert changed and not any(n.startswith(tower) and not n.startswith(projector) for n in changed)
    assert any(n.startswith("model.language_model.") for n in changed)
    losses = [m["train/loss"] for _, m in logger.rows if "train/loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("tiny", ["qwen3_vl", "internvl"], indirect=True)
def test_new_families_save_and_load_by_path(tiny, samples, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    p = load_processor(str(tmp_path))
    m = load_model(str(tmp_path), p)
    assert type(m) is type(model) and type(p) is type(processor)
    inputs, _ = encode_prompts(processor, samples[:2])
    loaded, _ = encode_prompts(p, samples[:2])
    assert all(torch.equal(inputs[k], loaded[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, m.eval()(**inputs).logits)


def test_internvl_refuses_pixel_bounds():
    with pytest.raises(ValueError, match="do not apply to InternVL"):
        load_processor("tiny:internvl", max_pixels=56 * 56)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_input_pixels_frame_is_qwen_vl_utils_resize(family):
    """The ``input_pixels`` box frame is read from the processor's own patch grid; it is
    the size Qwen's reference tool (qwen-vl-utils' ``smart_resize``) gives, for any image
    size and pixel bounds (up to an aspect ratio of 5; at 31 x 656 and 12544 pixels it rounds
    the short side to 0 where the processor keeps 28)."""
    import random

    from PIL import Image
    from qwen_vl_utils import smart_resize

    from lit_vr1.models.families import family_of
    from lit_vr1.models.loading import load_processor

    rng = random.Random(0)
    for min_pixels, max_pixels in ((56 * 56, 448 * 448), (28 * 28, 112 * 112)):
        processor = load_processor(f"tiny:{family}", min_pixels=min_pixels, max_pixels=max_pixels)
        for _ in range(20):
            w = rng.randint(28, 900)
            h = min(900, max(28, int(w * rng.uniform(0.2, 5.0))))
            enc = processor.image_processor(images=[Image.new("RGB", (w, h))], return_tensors="pt")
            got = family_of(processor).images.input_sizes(enc, [(w, h)], processor)
            rh, rw = smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
            assert got == [(rw, rh)], (w, h, min_pixels, max_pixels)


@pytest.mark.parametrize("tiny, frame", [("qwen2_5_vl", "input_pixels"), ("qwen2_vl", "norm1000")], indirect=["tiny"])
def test_box_rewards_read_the_policys_frame_unless_they_name_one(tiny, frame, samples):
    """A reward with no box_frame reads what the policy writes: its family's frame, which
    the rollout puts in every context (the module's box_frame when set)."""
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import generate
    from lit_vr1.models.families import vision_token_ids
    from lit_vr1.rewards import DetectionMAP, IoUReward
    from lit_vr1.rewards.base import SampleContext

    model, processor = tiny
    cfg = SamplingConfig(max_completion_length=2, suppress_ids=vision_token_ids(processor))
    rollout = generate(model, processor, samples[:1], 2, cfg)
    assert {c.box_frame for c in rollout.contexts} == {frame}
    assert generate(model, processor, samples[:1], 2, cfg, box_frame="norm1").contexts[0].box_frame == "norm1"
    # the same answer, read in the context's frame: [500, 500, 1000, 1000] in norm1000 is the lower-right quarter
    ctx = SampleContext(id="q", prompt="", solution=[100, 50, 200, 100], image_sizes=[(200, 100)],
                        input_sizes=[(200, 100)], box_frame="norm1000")
    answer = '[{"bbox_2d": [500, 500, 1000, 1000], "label": "x"}]'
    assert IoUReward()([answer], [ctx]) == [1.0]
    assert IoUReward(box_frame="input_pixels")([answer], [ctx]) == [0.0]  # a reward's own frame wins
    ctx.solution = '[{"bbox_2d": [100, 50, 200, 100], "label": "x"}]'
    assert DetectionMAP()([answer], [ctx]) == pytest.approx([1.0])


def test_pixel_bounds_that_hold_no_image_of_the_familys_token_size_are_warned_of():
    import warnings

    from lit_vr1.models.families.qwen2_vl import pixel_bounds_note
    from lit_vr1.models.loading import load_processor

    # the tiny twins' 56 x 56 bounds suit Qwen2.5-VL's 28 px tokens; Qwen3-VL's are 32 px, and it was fed 32 x 32
    assert pixel_bounds_note(3136, 3136, 28) is None and pixel_bounds_note(3136, 1003520, 32) is None
    assert pixel_bounds_note(4096, 4096, 32) is None and pixel_bounds_note(None, 3136, 32) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_processor("tiny:qwen3_vl", 3136, 3136)
        load_processor("tiny:qwen2_5_vl", 3136, 3136)
    notes = [str(w.message) for w in caught if "min_pixels" in str(w.message)]
    assert notes == ["model.min_pixels=3136 and model.max_pixels=3136 hold no square image whose sides are multiples "
                     "of 32 px (this model's image-token size): images are fed under min_pixels (a square one at "
                     "32x32); give bounds around a square of 32 px multiples (1024, 4096, ...)"], notes
