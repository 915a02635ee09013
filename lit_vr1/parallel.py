"""All of lit-vr1's parallelism in one place: sharding the policy (and reference) with
FSDP2, gathering sharded weights once for a whole rollout, and what the strategy rules of
:mod:`lit_vr1.checks` read about a strategy (checked at fit start, with what to do instead).

Strategies, as chosen with ``trainer.strategy`` (see ``configs/strategy/``):

- single device, ``ddp``: nothing to do here; every process holds the full model.
- ``ModelParallelStrategy`` (FSDP2, ``torch.distributed.fsdp.fully_shard``): Lightning
  gives the LightningModule a device mesh before ``configure_model``; :func:`shard` then
  shards each transformer block (decoder layers, vision blocks) and the root of the
  policy and of the reference over the mesh's ``data_parallel`` dimension.
- ``DeepSpeedStrategy`` (ZeRO-2/3, CUDA only in Lightning): DeepSpeed partitions the
  model itself; under ZeRO-3 :func:`gathered_for_generation` gathers it for a rollout.
- ``FSDPStrategy`` (FSDP1) is refused (``checks.no_fsdp1``): it cannot do manual optimisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lit_vr1.rules import ConfigError

# Lightning's ModelParallelStrategy names the dimensions of the mesh it hands to the module.
DATA_PARALLEL = "data_parallel"
TENSOR_PARALLEL = "tensor_parallel"


# -- FSDP2 ----------------------------------------------------------------------------------
def _fsdp_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 (only in the private namespace then)
        return None
    return FSDPModule


def is_fsdp(model: nn.Module | None) -> bool:
    """True when ``model`` was sharded with FSDP2's ``fully_shard``."""
    cls = _fsdp_module_class()
    return model is not None and cls is not None and isinstance(model, cls)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model, each to be sharded on its own: the
    classes the model lists in ``_no_split_modules`` (for Qwen2/2.5-VL: the decoder layers
    and the vision blocks)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if m is not model and type(m).__name__ in names]


def _reshard_after_forward(module: nn.Module, root: nn.Module) -> bool:
    # The blocks free their gathered weights after forward; the root keeps them (FSDP2's
    # own default for a root: backward needs them right away, and frees them after; a model
    # without backward, the reference, is resharded by :func:`reshard` after its pass).
    return module is not root


def reshard(model: nn.Module) -> None:
    """Free the gathered weights an FSDP2 model's root kept after its forwards (nothing otherwise).
    The reference has no backward to free them: after its first pass each process held its root
    (embeddings, head, merger, norms) whole for the rest of the fit (1.16 GiB of a 3B's tied float32
    embeddings, where its shard over 8 processes is 0.15). Called once after a reference pass, so
    its micro-batches share one gather."""
    if is_fsdp(model):
        model.reshard()


def data_parallel_mesh(mesh: Any) -> Any:
    """The ``data_parallel`` part of Lightning's device mesh; refuses tensor parallelism
    (``checks.no_tensor_parallel`` refuses it at fit start already)."""
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if TENSOR_PARALLEL in names and mesh[TENSOR_PARALLEL].size() > 1:
        raise ConfigError(tensor_parallel_message(mesh[TENSOR_PARALLEL].size()))
    return mesh[DATA_PARALLEL] if DATA_PARALLEL in names else mesh


def tensor_parallel_size(strategy: Any, mesh: Any) -> int:
    """The tensor-parallel size of a ModelParallelStrategy (from the module's device mesh when
    Lightning has built it, else the strategy's setting); 1 for any other strategy."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not isinstance(strategy, ModelParallelStrategy):
        return 1
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    tp = mesh[TENSOR_PARALLEL].size() if TENSOR_PARALLEL in names else getattr(strategy, "_tensor_parallel_size", 1)
    return tp if isinstance(tp, int) else 1


def tensor_parallel_message(tp: int) -> str:
    return (
        f"ModelParallelStrategy has tensor_parallel_size={tp}, but lit-vr1 shards with FSDP2 over the "
        "data-parallel dimension only (no tensor-parallel plan). Set "
        "trainer.strategy.init_args.tensor_parallel_size=1 and data_parallel_size=<num_nodes x devices> "
        "(see configs/strategy/fsdp2.yaml). Note that Lightning's default 'auto' makes tensor_parallel_size "
        "the number of devices per node."
    )


def shard(module: Any) -> None:
    """Shard the policy and the reference with FSDP2 when the strategy gave ``module`` a
    device mesh (Lightning's ``ModelParallelStrategy``); otherwise do nothing.

    Called from ``configure_model`` once the models exist. Each transformer block is
    sharded on its own, then the root (embeddings, norms, head, vision merger);
    idempotent: a model already sharded is left as it is.
    """
    mesh = getattr(module, "device_mesh", None)
    if mesh is None:
        return
    from torch.distributed.fsdp import fully_shard

    dp_mesh = data_parallel_mesh(mesh)
    for name in ("policy", "ref_model"):
        model = getattr(module, name, None)
        if model is None or is_fsdp(model):
            continue
        for block in transformer_blocks(model):
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=_reshard_after_forward(block, model))
        fully_shard(model, mesh=dp_mesh, reshard_after_forward=_reshard_after_forward(model, model))


def _init_fsdp_root(root: nn.Module) -> None:
    """Make ``root`` FSDP2's root before anything runs. FSDP2 picks as root the first sharded
    module whose forward runs; transformers' ``generate`` runs the vision tower (its blocks)
    on its own before the model's forward, to precompute image features, so a vision block
    would be taken for a root. FSDP2 has no public call for this (idempotent)."""
    state = getattr(root, "_get_fsdp_state", None)
    if state is not None:
        state()._lazy_init()


@contextlib.contextmanager
def _fsdp_gathered(root: nn.Module) -> Iterator[None]:
    """All of ``root``'s FSDP2 modules unsharded once, kept so for the whole block (every
    decoding step reuses them), then resharded and given back their usual behaviour."""
    cls = _fsdp_module_class()
    fsdp_modules = [m for m in root.modules() if isinstance(m, cls)]
    _init_fsdp_root(root)
    try:
        for m in fsdp_modules:
            m.set_reshard_after_forward(False, recurse=False)
        for m in fsdp_modules:
            m.unshard()  # one all-gather per module, for the whole rollout
        yield
    finally:
        for m in fsdp_modules:
            m.reshard()
            m.set_reshard_after_forward(_reshard_after_forward(m, root), recurse=False)


def deepspeed_engine(module: Any) -> Any:
    """The DeepSpeed engine the module trains under, else None."""
    trainer = getattr(module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    return getattr(strategy, "model", None) if strategy is not None and is_deepspeed(strategy) else None


def engine_grad_norm(engine: Any) -> float | None:
    """The global gradient norm (before clipping) a DeepSpeed engine computed in its last step;
    None when it computed none. For a step it skipped over non-finite gradients some releases
    report inf and others the previous step's norm, so skips are read from
    ``engine.was_step_applied()``, not from this."""
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def _deepspeed_zero3_engine(module: Any) -> Any:
    """The DeepSpeed engine when the module trains under ZeRO stage 3, else None."""
    engine = deepspeed_engine(module)
    return engine if engine is not None and getattr(module.trainer.strategy, "zero_stage_3", False) else None


@contextlib.contextmanager
def _zero3_gathered(engine: Any, policy: nn.Module) -> Iterator[None]:
    """ZeRO-3: gather the partitioned weights once for the rollout (code path only: DeepSpeed
    runs on CUDA only in Lightning, so this is not exercised by the CPU tests)."""
    try:  # in deepspeed 0.19: gathers once and lifts ZeRO-3's per-module fetch/release hooks meanwhile
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
    except ImportError:
        unwrap_model_for_generation = None
    if unwrap_model_for_generation is not None and getattr(engine, "optimizer", None) is not None:
        with unwrap_model_for_generation(engine):
            yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None):
        yield


@contextlib.contextmanager
def gathered_for_generation(module: Any) -> Iterator[None]:
    """Wraps a rollout: under FSDP2 the policy's weights are all-gathered once (not at every
    decoding step) and resharded afterwards; under DeepSpeed ZeRO-3 they are gathered once
    with DeepSpeed's own context; otherwise nothing happens."""
    policy = getattr(module, "policy", None)
    if is_fsdp(policy):
        with _fsdp_gathered(policy):
            yield
        return
    engine = _deepspeed_zero3_engine(module)
    if engine is not None:
        with _zero3_gathered(engine, policy):
            yield
        return
    yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` as full tensors on every process (a
    collective under FSDP2: call it on all ranks); a plain ``state_dict`` otherwise."""
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


# -- what the strategy rules read ---------------------------------------------------------------------
def is_deepspeed(strategy: Any) -> bool:
    """True for Lightning's DeepSpeedStrategy (importable without deepspeed installed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy)


def deepspeed_knows_unmanaged_accumulation() -> bool:
    """True when the installed deepspeed takes ``"managed_gradient_accumulation": false``."""
    try:
        from deepspeed.runtime.constants import MANAGED_GRADIENT_ACCUMULATION  # noqa: F401
    except ImportError:
        return False
    return True


# -- a process of the run stopped -----------------------------------------------------------
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")  # gloo's words


class PeerStopped(RuntimeError):
    """This process's collective failed because another process of the run stopped first."""


def peer_stopped(exc: BaseException) -> PeerStopped | None:
    """The message for a collective that failed under this process because another one stopped
    (its own error, an out-of-memory error say, is what to read: its rank prints it), in place of
    the backend's traceback; None for any other error. gloo says so in a ``RuntimeError`` whose
    text names the closed connection; NCCL and the others raise ``DistBackendError``, whose first
    line is kept, since a timeout raises it too."""
    backend = isinstance(exc, torch.distributed.DistBackendError)
    if not backend and not (isinstance(exc, RuntimeError) and any(w in str(exc) for w in PEER_GONE)):
        return None
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PeerStopped("a collective of this process failed, most likely because another process of this run "
                       "stopped first (or the collective timed out): read that process's own error (printed by its "
                       "rank) for the cause. "
                       f"The backend said: {said}")
