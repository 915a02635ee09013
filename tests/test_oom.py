"""Out of memory, said as a user can act on it (lit_vr1/oom.py): the pass that ran out, its
size and the options that make it smaller, in one line, with where the fit resumes.

A CPU cannot run out of memory the way a GPU does (the kernel's OOM killer ends the process
instead), so the passes raise torch's own ``OutOfMemoryError`` here, as the CUDA allocator would."""

from __future__ import annotations

import pytest
import torch

import lit_vr1.loop as loop_module
import lit_vr1.module as module_module
from lit_vr1 import oom
from lit_vr1.cli import main, user_error
from lit_vr1.models.tiny import TinySpec, build_tiny
from tests.test_new_user import small

TORCH_SAYS = "CUDA out of memory. Tried to allocate 2.32 GiB. GPU 0 has a total capacity of 79.10 GiB"


def quickstart_model():
    return build_tiny("qwen2_5_vl", spec=TinySpec(num_layers=2))[0]


def failing_on_call(fn, call: int):
    """``fn`` that raises torch's OutOfMemoryError on its ``call``-th call (1-based)."""
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise torch.OutOfMemoryError(TORCH_SAYS)
        return fn(*args, **kwargs)

    return wrapped


def run_fit(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(["fit", *small(tmp_path / "run", tmp_path / "data"), *extra])
    return info.value.code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lit-vr1: error:")]


def test_the_update_running_out_names_the_micro_batch_its_logits_and_where_the_fit_resumes(tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.setattr(loop_module, "logprobs_and_entropy", failing_on_call(loop_module.logprobs_and_entropy, 2))
    code, err = run_fit(tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert "out of memory in the policy update (forward and backward) (one pass of 4 completions x 4 tokens" in line
    assert "model.grpo.micro_batch_size: 2 or fewer (now null" in line and "model.gradient_checkpointing: true" in line
    assert f"torch said: {TORCH_SAYS}" in line
    # the float32 logits of 4 x 4 positions over the tiny vocabulary
    vocab = quickstart_model().config.text_config.vocab_size
    assert f"float32 logits alone take {oom.gib(4 * 4 * vocab * 4)}" in line
    assert "resumes from" in err and "last.ckpt (optimiser step 1)" in err  # step 1 was saved, step 2 ran out
    # what the process held, counted from its tensors: float32 policy and reference, AdamW's two moments
    # and step counts; the gradients were set to None after step 1 and the update ran out before its backward
    params = {p.data_ptr(): p for p in quickstart_model().parameters()}.values()
    weights = sum(p.numel() for p in params) * 4
    optimiser = 2 * weights + 4 * len(params)
    assert (f"this process holds {oom.gib(2 * weights + optimiser)} before any activation: policy weights "
            f"{oom.gib(weights)}, reference {oom.gib(weights)}, gradients none yet, optimiser state {oom.gib(optimiser)}") in line


def test_options_already_taken_are_not_offered_again_and_new_run_options_say_so(tmp_path, capsys, monkeypatch):
    """With checkpointing and a frozen tower set, the update's line offers neither again; LoRA,
    which a resume would refuse, says it is for a new run."""
    monkeypatch.setattr(loop_module, "logprobs_and_entropy", failing_on_call(loop_module.logprobs_and_entropy, 2))
    code, err = run_fit(tmp_path, capsys, "--model.gradient_checkpointing=true", "--model.freeze_vision=true")
    [line] = error_lines(err)
    assert "model.gradient_checkpointing" not in line and "model.freeze_vision" not in line
    assert "model.lora (the base frozen: no gradients or AdamW state for it, and no reference copy; a new run: a resume " \
           "refuses another model)" in line and "resumes from" in err
    module = type("M", (), {"lora": object(), "gradient_checkpointing": False, "freeze_vision": False})()
    assert oom.not_taken(oom.STATIC_OPTIONS, module) == [oom.STATIC_OPTIONS[1]]  # LoRA freezes the tower too
    # a device mostly held by weights and optimiser state puts the static options first, without adding back taken ones
    monkeypatch.setattr(oom, "_mostly_held", lambda held, device: True)
    options = oom.not_taken(oom.scoring_options(8, None, 4, True), module)
    said = oom.message("the policy update", "x", options, None, RuntimeError("oom"), oom.Held(1, 1, 1, 1))
    assert "model.lora" not in said and "model.freeze_vision" not in said
    assert said.index("FSDP2") < said.index("model.grpo.micro_batch_size")


def test_the_rollout_running_out_names_prompts_generations_and_its_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module, "generate", failing_on_call(loop_module.generate, 1))
    code, err = run_fit(tmp_path, capsys)
    [line] = error_lines(err)
    assert code == 2 and "Traceback" not in err
    config = quickstart_model().config.text_config
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    assert ("out of memory in the rollout (2 prompts x G=2 = 4 completions of up to 4 tokens, whose key/value cache "
            f"takes {oom.gib(cache * 4 * 4 * 4)} for the completion tokens alone (each of the rows holds its prompt's "
            "tokens too") in line  # float32 entries: the quickstart trains in 32-bit
    assert "a smaller data.batch_size (prompts per rollout, now 2; a new run: a resume keeps the data" in line
    assert "num_generations (now 2)" in line
    assert "resumes" not in err  # the first step ran out: nothing saved, no resume offered


def test_the_reference_pass_running_out_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module, "logprobs_in_parts", failing_on_call(loop_module.logprobs_in_parts, 1))
    code, err = run_fit(tmp_path, capsys, "--model.init_args.grpo.micro_batch_size=2")
    [line] = error_lines(err)
    assert "out of memory in the reference log-prob pass (micro-batches of 2 completions x 4 tokens" in line
    assert "model.grpo.micro_batch_size: 1 or fewer (now 2)" in line
    assert "gradient_checkpointing" not in line  # no backward in a reference pass: its options only


def test_the_optimiser_step_running_out_puts_what_the_process_holds_first(tmp_path, capsys, monkeypatch):
    """AdamW's state is made at the first step: the likeliest place for a full fine-tune to run out."""
    from lit_vr1.grpo import GRPOModule

    monkeypatch.setattr(GRPOModule, "apply_update", failing_on_call(GRPOModule.apply_update, 1))
    code, err = run_fit(tmp_path, capsys)
    [line] = error_lines(err)
    assert line.startswith("lit-vr1: error: out of memory in the optimiser step (clipping and the optimiser's update")
    trainable = sum(p.numel() for p in quickstart_model().parameters())
    assert f"({trainable} trainable parameters; this process holds " in line
    assert line.split("make it smaller with ")[1].startswith("model.lora")


def test_a_validation_running_out_names_its_batch_and_length(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(module_module, "predict_rec", failing_on_call(module_module.predict_rec, 1))
    code, err = run_fit(tmp_path, capsys)
    [line] = error_lines(err)
    assert "out of memory in the validation (2 held-out prompts decoded greedily" in line
    assert "a smaller data.val_batch_size (now 2)" in line and "model.eval_max_new_tokens" in line


def test_elsewhere_the_message_is_general_and_other_runtime_errors_stay_tracebacks():
    try:
        try:
            raise torch.OutOfMemoryError(TORCH_SAYS)
        except torch.OutOfMemoryError as exc:
            raise RuntimeError("wrapped by a library") from exc
    except RuntimeError as outer:
        error = user_error(outer)
    assert isinstance(error, oom.OutOfMemory)
    assert str(error).startswith("out of memory in this run") and "FSDP2" in str(error) and TORCH_SAYS in str(error)
    assert "in SFT a smaller data.batch_size with trainer.accumulate_grad_batches raised to match" in str(error)
    assert user_error(RuntimeError("a bug")) is None


def test_sizes_follow_the_language_models_config():
    model = quickstart_model()
    shape = oom.TextShape.of(model)
    text = model.config.text_config
    assert (shape.layers, shape.kv_heads, shape.vocab) == (text.num_hidden_layers, text.num_key_value_heads,
                                                            text.vocab_size)
    assert shape.cache_bytes(rows=3, tokens=5, value_bytes=2) == 2 * shape.layers * shape.kv_heads * shape.head_dim * 30
    assert shape.logits_bytes(rows=3, tokens=5) == 60 * shape.vocab
    assert oom.TextShape.of(torch.nn.Linear(2, 2)) is None  # no config: the sizes are left out, not guessed
    assert oom.scoring_size(None, 4, 8, "one pass") == "one pass of 4 completions x 8 tokens"


def test_one_process_running_out_under_ddp_stops_both_with_one_message_each(tmp_path):
    """Under DDP the process that ran out says why; the other, whose collective lost its peer,
    says that, not a 40-line backend traceback; both stop (gloo on the CPU: under NCCL the
    surviving process waits for its collective's timeout, not tested here)."""
    import subprocess

    from tests.test_resume import _env, fit_command

    out = tmp_path / "run"
    running_out = ({"class_path": "tests.helpers.OutOfMemoryDuring", "init_args": {"step": 3, "rank": 1}},)
    cmd = fit_command(out, out / "ckpt", tmp_path / "data", "--trainer.devices=2", "--trainer.strategy=ddp",
                      "--trainer.accelerator=cpu", more_callbacks=running_out)
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    # 2 (lit-vr1's error) or -9: Lightning's launcher SIGKILLs every process when a child exits non-zero,
    # the main one included, whenever its watcher sees rank 1 go before rank 0 has exited (load decides)
    assert proc.returncode in (2, -9) and "Traceback" not in err, err[-4000:]
    assert err.count("lit-vr1: error: out of memory in the policy update") == 1, err[-4000:]
    assert err.count("lit-vr1: error: a collective of this process failed") == 1, err[-4000:]
    assert f"resumes from {out / 'ckpt' / 'last.ckpt'} (optimiser step 2)" in err


def test_weights_and_optimiser_state_filling_the_device_put_their_options_first(monkeypatch):
    """The 3B recipe on one 80 GB card: float32 policy, reference, gradients and AdamW state take
    about 70 GiB before any activation, and no micro-batch size fits beside them. (The CUDA
    calls answer as an 80 GB card would; the CPU has none.)"""
    gb = oom.GIB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gb, 79.1 * gb))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 78 * gb)
    update = oom.scoring_options(4, 4, 1024, update=True)
    full = oom.Held(policy=14 * gb, reference=14 * gb, gradients=14 * gb, optimiser=28 * gb)
    text = oom.message("the policy update", "one pass", update, "cuda:0", torch.OutOfMemoryError("x"), full)
    assert "this process holds 70.00 GiB before any activation" in text
    assert "cuda:0 holds 79.10 GiB, this process's peak allocation 78.00 GiB" in text
    assert text.split("make it smaller with ")[1].startswith("model.lora")
    light = oom.Held(policy=1 * gb, reference=0, gradients=1 * gb, optimiser=2 * gb)
    text = oom.message("the policy update", "one pass", update, "cuda:0", torch.OutOfMemoryError("x"), light)
    assert text.split("make it smaller with ")[1].startswith("model.grpo.micro_batch_size: 2 or fewer")
    assert "reference" not in text.split("before any activation")[1].split(";")[0]  # none held: not listed


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_cuda_out_of_memory_is_said_in_one_line(tmp_path, capsys):
    """On a GPU whose allocator may take no new block from step 2 on: the pass that asks for one
    fails with CUDA's own OutOfMemoryError, which the command prints as one line."""
    cap = '[{class_path: tests.helpers.CudaMemoryCapDuring, init_args: {step: 2}}]'
    code, err = run_fit(tmp_path, capsys, "--trainer.accelerator=gpu", "--trainer.devices=1",
                        f"--trainer.callbacks+={cap}")
    assert code == 2 and "Traceback" not in err, err[-3000:]
    [line] = error_lines(err)
    assert line.startswith("lit-vr1: error: out of memory in ") and "torch said: CUDA out of memory" in line, line

