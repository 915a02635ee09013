import warnings

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lit_vr1.generation import encode_prompts
from lit_vr1.models.loading import ModelLoadError, load_model, load_processor
from lit_vr1.models.tiny import build_tiny


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_tiny_is_deterministic_and_round_trips(tmp_path, samples, family):
    m1, p1 = build_tiny(family, seed=7)
    m2, p2 = build_tiny(family, seed=7)
    m3, _ = build_tiny(family, seed=8)
    n_params = sum(p.numel() for p in m1.parameters())
    assert 5e5 < n_params < 5e6
    assert p1.tokenizer.get_vocab() == p2.tokenizer.get_vocab()
    sd1, sd2, sd3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1)
    m1.save_pretrained(tmp_path)
    p1.save_pretrained(tmp_path)
    p_loaded = AutoProcessor.from_pretrained(tmp_path)
    m_loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(m_loaded) is type(m1) and type(p_loaded) is type(p1)
    inputs, _ = encode_prompts(p1, samples[:2])
    inputs_loaded, _ = encode_prompts(p_loaded, samples[:2])
    assert all(torch.equal(inputs[k], inputs_loaded[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(m1(**inputs).logits, m_loaded(**inputs).logits)


def test_tokenizer_has_qwen_specials_and_template(tiny_qwen25):
    _, processor = tiny_qwen25
    tok = processor.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|endoftext|>"):
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1, t
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(tok("Locate the red circle [12, 5, 99, 7]").input_ids) == "Locate the red circle [12, 5, 99, 7]"


def test_load_by_path_uses_the_same_code_path(tmp_path, tiny_qwen25):
    model, processor = tiny_qwen25
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    p = load_processor(str(tmp_path), min_pixels=28 * 28, max_pixels=56 * 56)
    m = load_model(str(tmp_path), p)
    assert type(m) is type(model)
    assert p.image_processor.size["longest_edge"] == 56 * 56


def test_a_saved_policy_trains_in_train_mode(tmp_path, tiny_qwen25):
    """from_pretrained returns eval mode and Lightning keeps it: the module must switch it back."""
    from lit_vr1.sft import SFTModule

    model, processor = tiny_qwen25
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    module = SFTModule(model=str(tmp_path))
    module.configure_model()
    assert module.policy.training and all(m.training for m in module.policy.modules())


def test_min_max_pixels_bound_the_input_size(samples):
    p = load_processor("tiny:qwen2_5_vl", min_pixels=28 * 28, max_pixels=56 * 56)
    inputs, _ = encode_prompts(p, samples[:1])
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert h * w * 14 * 14 <= 56 * 56 and (h * 14) % 28 == 0 and (w * 14) % 28 == 0


def test_bad_model_names_say_why(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"nowhere': no such folder \(read from "):
        load_processor(str(tmp_path / "nowhere"))
    # a training checkpoint, a weights file, a folder of checkpoints, a misspelt relative folder (helper-85:
    # "no config.json ... not a valid JSON file", "of type None", a hub lookup's network errors)
    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "checkpoints" / "last.ckpt").write_bytes(b"PK")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"is a training checkpoint, not a model folder: export it \(python -m "
                                             r"lit_vr1.export runs/checkpoints/last.ckpt <folder>\)"):
        load_processor("runs/checkpoints/last.ckpt")
    with pytest.raises(ModelLoadError, match="'model.safetensors' is a file: a model is a folder holding config.json"):
        load_processor("model.safetensors")
    with pytest.raises(ModelLoadError, match=r"'runs/checkpoints' is a folder without config.json: it holds training "
                                             r"checkpoints \(last.ckpt\); export one"):
        load_processor("runs/checkpoints")
    with pytest.raises(ModelLoadError, match=r"'runs/nonexistent_model': no such folder under runs/"):
        load_processor("runs/nonexistent_model")
    with pytest.raises(ModelLoadError, match="tiny:qwen2_5_vl, tiny:qwen2_vl"):
        load_processor("tiny:llava")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="does not support; supported families: qwen2_5_vl, qwen2_vl"):
        load_processor(str(tmp_path / "bert"))


def _folder(tmp_path, model, processor, name: str, drop=(), config=None, processor_from=None):
    folder = tmp_path / name
    model.save_pretrained(folder)
    (processor_from or processor).save_pretrained(folder)
    for part in drop:
        (folder / part).unlink(missing_ok=True)
    if config:
        import json

        saved = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**saved, **config}))
    return str(folder)


def _llava_processor(processor):
    """A LLaVA processor over the tiny tokenizer (its image processor a CLIP one)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=processor.tokenizer,
                          chat_template=processor.chat_template, image_token="<|image_pad|>")


def test_a_checkpoint_whose_processor_does_not_fit_its_weights_is_refused_when_loaded(tmp_path, tiny_qwen25):
    """A new user's own folders (helper-51): each loaded, and the fit then failed in transformers
    mid-step ("Image features and image tokens do not match", a reshape error, a token count
    "likely due to truncation" from an empty tokenizer, a 73-line chat-template traceback)."""
    model, processor = tiny_qwen25
    assert load_processor(_folder(tmp_path, model, processor, "whole")) is not None
    cases = [
        (dict(drop=("tokenizer.json", "tokenizer_config.json")), r"its tokenizer does not know the image token <\|image_pad\|>"),
        (dict(config={"image_token_id": 20}),
         r"config.json's image_token_id is 20 but its tokenizer gives <\|image_pad\|> the id 12"),
        (dict(drop=("chat_template.jinja",)), "has no chat template"),
        (dict(processor_from=build_tiny("qwen3_vl", seed=0)[1]), "its processor is Qwen3VLProcessor .family qwen3_vl. but "
                                                                 "its config.json's model_type is qwen2_5_vl"),
        (dict(drop=("processor_config.json", "preprocessor_config.json")), "its processor cannot be loaded"),
        (dict(processor_from=_llava_processor(processor)), "its processor is LlavaProcessor, of no family lit-vr1 "
                                                           "supports .its config.json's model_type is qwen2_5_vl"),
    ]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(ModelLoadError, match=message):
            load_processor(_folder(tmp_path, model, processor, f"broken{i}", **change))


def test_a_processor_of_other_patch_sizes_is_refused(tmp_path, tiny_qwen25):
    model, processor = tiny_qwen25
    folder = _folder(tmp_path, model, processor, "patch")
    import json
    from pathlib import Path

    path = Path(folder) / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["image_processor"]["patch_size"] = 16
    path.write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError, match="image processor's patch_size is 16 but the vision tower's patch_size is 14"):
        load_processor(folder)


def test_attention_implementation_is_checked_against_this_machine():
    import importlib.util

    from lit_vr1.module import check_attention

    assert check_attention("sdpa") == "sdpa" and check_attention("eager") == "eager"
    with pytest.raises(ValueError, match="choose one of sdpa, eager, flash_attention_2"):
        check_attention("flash")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValueError, match="needs the flash-attn package"):
            check_attention("flash_attention_2")
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA GPUs only"):
            check_attention("flash_attention_2")
    else:
        assert check_attention("flash_attention_2") == "flash_attention_2"


def test_contradictory_pixel_bounds_are_refused_and_bounds_under_one_token_warned_of():
    """min_pixels above max_pixels (given, or the folder's own) was accepted and images fed at any
    size; a max_pixels under one image token fed every image over it, silently."""
    from lit_vr1.models.families import family_of

    with pytest.raises(ValueError, match=r"model.min_pixels=100000 is above model.max_pixels=3136: no image size"):
        load_processor("tiny:qwen2_5_vl", min_pixels=100000, max_pixels=3136)
    processor = load_processor("tiny:qwen2_5_vl", min_pixels=12544, max_pixels=50176)  # as a folder's own bounds
    with pytest.warns(UserWarning, match=r"model.max_pixels=3136 is past the processor's own min_pixels \(12544\): its "
                                         r"min_pixels is set to 3136 too"):
        family_of(processor).images.set_pixel_bounds(processor, None, 3136)  # as Qwen3-VL's own 65536 and 50176
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 3136}
    with pytest.warns(UserWarning, match=r"model.max_pixels=100 is under one image token \(28x28 = 784 px"):
        load_processor("tiny:qwen2_5_vl", min_pixels=10, max_pixels=100)


def _edit_json(path, edit) -> None:
    import json
    from pathlib import Path

    saved = json.loads(Path(path).read_text())
    edit(saved)
    Path(path).write_text(json.dumps(saved))


def test_a_chat_template_that_writes_no_image_placeholder_is_refused_when_loaded(tmp_path, tiny_qwen25):
    """Another family's template, or a text-only one (helper-67): it loaded, and the first forward,
    minutes into a fit, failed with a 72-line traceback ('... 0 <|image_pad|> tokens and 8 images')."""
    from pathlib import Path

    model, processor = tiny_qwen25
    for i, (old, new) in enumerate([("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n"),
                                    ("<|vision_start|><|image_pad|><|vision_end|>", "")]):
        folder = Path(_folder(tmp_path, model, processor, f"template{i}"))
        template = (folder / "chat_template.jinja").read_text()
        assert old in template
        (folder / "chat_template.jinja").write_text(template.replace(old, new))
        with pytest.raises(ModelLoadError, match=r"its chat template writes no <\|image_pad\|> for an image"):
            load_processor(str(folder))


def test_a_chat_template_only_in_tokenizer_config_is_the_processors(tmp_path, tiny_qwen25, samples):
    """The check accepted it (its message names tokenizer_config.json), then encoding a prompt failed
    with 'this processor does not have a chat template' (helper-67)."""
    from pathlib import Path

    model, processor = tiny_qwen25
    folder = Path(_folder(tmp_path, model, processor, "tokenizer_template"))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    _edit_json(folder / "tokenizer_config.json", lambda c: c.update(chat_template=template))
    loaded = load_processor(str(folder))
    assert loaded.chat_template == template
    inputs, _ = encode_prompts(loaded, samples[:1])
    assert (inputs["input_ids"] == loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() > 0


def test_an_internvl_processor_of_another_tile_or_token_count_is_refused(tmp_path):
    """Tiles of 224 px fed to a 112-px tower trained silently (its position embeddings stretched,
    4x the tokens); 64 tokens a tile against the model's 16 failed at the first forward (helper-67)."""
    model, processor = build_tiny("internvl", seed=0)
    folder = _folder(tmp_path, model, processor, "tile")
    _edit_json(f"{folder}/processor_config.json",
               lambda c: c["image_processor"].update(size={"height": 224, "width": 224}))
    with pytest.raises(ModelLoadError, match="its image processor's tile size is 224 but the vision tower's image_size is 112"):
        load_processor(folder)
    folder = _folder(tmp_path, model, processor, "tokens")
    _edit_json(f"{folder}/processor_config.json", lambda c: c.update(image_seq_length=64))
    with pytest.raises(ModelLoadError, match=r"its processor's image_seq_length \(tokens per image tile\) is 64 but the "
                                             "config.json's image_seq_length is 16"):
        load_processor(folder)


def test_a_remote_code_checkpoint_is_refused_from_its_config_json_without_running_it(tmp_path, monkeypatch):
    """AutoConfig asked 'Do you wish to run the custom code? [y/N]', then the refusal said the folder
    held no config.json (helper-67)."""
    import builtins
    import json

    def no_prompt(*args, **kwargs):
        raise AssertionError("asked on stdin")

    monkeypatch.setattr(builtins, "input", no_prompt)
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "config.json").write_text(json.dumps(
        {"model_type": "internvl_chat", "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}}))
    with pytest.raises(ModelLoadError, match="is of type 'internvl_chat', which lit-vr1 does not support.*-hf"):
        load_processor(str(tmp_path / "chat"))


def test_bounds_that_replace_a_checkpoints_own_are_said(tmp_path, tiny_qwen25, caplog):
    """A recipe's min/max_pixels over a fine-tune saved with others fed its images at other sizes and
    rewrote its exported processor, with nothing said (helper-67); one info line, not a warning: over
    a base checkpoint the recipe's bounds are meant (helper-68)."""
    model, processor = tiny_qwen25
    folder = _folder(tmp_path, model, processor, "bounds")
    _edit_json(f"{folder}/processor_config.json",
               lambda c: c["image_processor"].update(size={"shortest_edge": 12544, "longest_edge": 12544}))
    caplog.set_level("INFO")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_processor(folder, min_pixels=3136, max_pixels=12845056)
        assert ("images are sized by model.min_pixels / max_pixels, not by its processor's own bounds (min_pixels "
                "12544 -> 3136, max_pixels 12544 -> 12845056), and an export saves these") in caplog.text
        caplog.clear()
        load_processor(folder)  # the checkpoint's own
        load_processor(folder, max_pixels=12544)  # the same value: nothing replaced
        assert "not by its processor's own bounds" not in caplog.text
