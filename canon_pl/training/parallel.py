"""Scale-out through Lightning's own strategies: DDP with state kept in sync by explicit reductions, FSDP2 sharding
of wide SAEs, a check that the ranks agree, and a throughput monitor with the SAE step's FLOP/s.

Everything the SAE keeps besides its parameters (dead counters, the BatchTopK threshold, the input statistics) is
reduced by :mod:`canon_pl.distributed` inside the SAE code, so DDP is told not to broadcast buffers from rank 0:
:class:`RankAgreementCheck` then proves that the reductions, not a broadcast, keep the ranks identical.
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import Tensor

from canon_pl.distributed import all_gather_objects, is_distributed


class SAEDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that leaves buffers alone (``broadcast_buffers=False``): canon-pl reduces its state itself.

    Any other ``DistributedDataParallel`` option can still be given as a keyword.
    """

    def __init__(self, process_group_backend: str | None = None, find_unused_parameters: bool = False,
                 **ddp_kwargs: Any) -> None:
        """
        Args:
            process_group_backend: ``nccl`` for GPUs, ``gloo`` for CPU processes; ``None`` picks by device.
            find_unused_parameters: Passed to ``DistributedDataParallel``.
        """
        if ddp_kwargs.get("broadcast_buffers") is None:  # LightningCLI passes every DDP option, unset ones as None
            ddp_kwargs["broadcast_buffers"] = False
        super().__init__(process_group_backend=process_group_backend,
                         find_unused_parameters=find_unused_parameters, **ddp_kwargs)


class SAEFSDPStrategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over every device: each SAE's parameters, gradients and Adam state are split by rows
    between the ranks, for SAEs too wide for one device's memory. Checkpoints are single files (gathered on rank 0)
    unless ``save_distributed_checkpoint=True``; exports are the usual single-file format either way."""

    def __init__(self, save_distributed_checkpoint: bool = False, process_group_backend: str | None = None) -> None:
        """
        Args:
            save_distributed_checkpoint: Write one shard file per rank instead of one gathered file.
            process_group_backend: ``nccl`` for GPUs, ``gloo`` for CPU processes; ``None`` picks by device.
        """
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend)

    def setup_environment(self) -> None:
        # All devices of all nodes form one data-parallel (sharding) dimension.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def _digest(tensor: Tensor) -> str:
    data = tensor.detach().cpu().reshape(-1).contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


class RankAgreementCheck(L.Callback):
    """Stops training with a clear error when the ranks' copies of the SAE state differ.

    Every ``every_n_steps`` steps (and at the end of ``fit``) each rank hashes its buffers (dead counters, inference
    thresholds, activation scale, token counts) and, unless sharded, its parameters; the hashes are gathered and
    compared. Under DDP they must be bit-identical: the same averaged gradients and the same reduced statistics.
    """

    def __init__(self, every_n_steps: int = 50, parameters: bool = True) -> None:
        """
        Args:
            every_n_steps: How often to compare (a small all-gather of hashes).
            parameters: Compare parameters too (skipped for FSDP-sharded ones, which no two ranks share).
        """
        self.every_n_steps = every_n_steps
        self.parameters = parameters
        self.checks = 0

    def _state(self, pl_module: L.LightningModule) -> dict[str, str]:
        state = {f"buffer {name}": _digest(b) for name, b in pl_module.named_buffers() if "val_metrics" not in name}
        if self.parameters:
            state.update({f"parameter {name}": _digest(p) for name, p in pl_module.named_parameters()
                          if not hasattr(p, "device_mesh")})
        return state

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_distributed():
            return
        states = all_gather_objects(self._state(pl_module))
        for rank, state in enumerate(states[1:], start=1):
            differing = sorted(name for name in states[0] if state.get(name) != states[0][name])
            if differing:
                raise RuntimeError(
                    f"rank {rank} disagrees with rank 0 at step {trainer.global_step} in {', '.join(differing[:5])}"
                    f"{' ...' if len(differing) > 5 else ''}: state that should be reduced across ranks was not; the "
                    f"checkpoints already written are untouched (report this with the config that produced it)"
                )
        self.checks += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module)


def tokens_in_batch(batch: Tensor | dict[str, Tensor]) -> int:
    """Activation vectors in a training batch ``[batch, d_in]`` or a validation dict's ``activations``."""
    return int((batch["activations"] if isinstance(batch, dict) else batch).shape[0])


class SAEThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` for SAE batches: logs tokens/s (``train|throughput/...``) and, where the
    device's peak is known (CUDA GPUs), the achieved FLOP/s and its fraction of the peak (``mfu``) from the
    module's ``flops_per_batch`` (see :func:`canon_pl.metrics.sae_training_flops`)."""

    def __init__(self, window_size: int = 50) -> None:
        """
        Args:
            window_size: Batches averaged over.
        """
        super().__init__(batch_size_fn=tokens_in_batch, window_size=window_size)


class Float32MatmulPrecision(L.Callback):
    """Sets ``torch.set_float32_matmul_precision`` when training starts: ``high`` lets fp32 SAE matmuls use TF32
    tensor cores on Ampere and later GPUs (about 8x the fp32 peak; 10-bit mantissa products, fp32 sums)."""

    def __init__(self, precision: str = "high") -> None:
        """
        Args:
            precision: ``highest`` (true fp32), ``high`` (TF32) or ``medium`` (bf16 products).
        """
        if precision not in ("highest", "high", "medium"):
            raise ValueError(f"precision must be highest, high or medium, got {precision!r}")
        self.precision = precision

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.precision)
