"""The workers of one trial: one process, or several data-parallel ones (Ray Train's TorchTrainer sets up the
process group; this module only uses it).

`Workers` gives run_trial its rank, device and the collectives it needs; every helper is a no-op for a single
worker. `wrap` makes the trainable module data parallel: DDP replicates it (each worker holds the base), FSDP2
(`fully_shard`) shards each decoder layer and the rest of the base over the workers (a 16-bit base too large
for one GPU; validation refuses 4- and 8-bit bases with FSDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Workers:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, strategy: str = "ddp", device: torch.device | None = None) -> Workers:
        """This process's place: from the process group if one is set up, else a single worker."""
        if device is None:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if not (dist.is_available() and dist.is_initialized()):
            return cls(device=device)
        local = device.index or 0 if device.type == "cuda" else 0
        return cls(dist.get_rank(), dist.get_world_size(), local, strategy, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_sum(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.SUM)

    def all_max(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.MAX)

    def _reduce(self, value: float, op: Any) -> float:
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=op)
        return float(tensor.item())

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(self, items: list[Any]) -> list[Any]:
        """Every worker's `items`, concatenated in rank order (on every worker)."""
        if not self.distributed:
            return list(items)
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, items)
        return [item for part in out for item in part]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, count: int) -> tuple[list[int], int]:
        """(this worker's indices into `count` items, how many of them are real): every worker gets the same number
        of items (FSDP needs the same number of forward passes on every worker), padded with repeats of item 0."""
        per_worker = math.ceil(count / self.world) if count else 0
        mine = list(range(self.rank, count, self.world))
        real = len(mine)
        return mine + [0] * (per_worker - real), real

    def wrap(self, module: torch.nn.Module, inner: Any) -> torch.nn.Module:
        """`module` (the loss module around the PEFT model `inner`) made data parallel, or itself alone."""
        if not self.distributed:
            return module
        if self.strategy == "fsdp":
            return shard_fsdp(module, inner)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (Llama's model.layers, GPT-2's transformer.h, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers"):
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList):
            return list(node)
    raise ValueError(f"resources.strategy=fsdp: cannot find the decoder layers of {type(base).__name__}")


def shard_fsdp(module: torch.nn.Module, inner: Any) -> torch.nn.Module:
    """FSDP2: each decoder layer a shard group, then the causal LM itself (so that generate(), which calls it
    directly, gathers its weights too)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(inner):
        fully_shard(layer)
    fully_shard(inner.get_base_model())
    return module


def load_from_rank0(model: torch.nn.Module, full_state: dict[str, torch.Tensor] | None) -> None:
    """Fill the sharded `model` (built on the meta device, then shard_fsdp) with rank 0's `full_state` (its
    state_dict, on the host; None elsewhere): torch sends one tensor at a time and each worker keeps only its shard,
    so no device ever holds the whole base (torchtune's and accelerate's way). A collective: every worker calls.
    A tied lm_head is loaded as its own tensor and FSDP re-ties it to the embedding at the first forward
    (FSDPParam sets the shared parameter on every module that holds it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full_state or {}, options=options)


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's trainable parameters (the adapter) as whole tensors on CPU; under FSDP each is gathered from
    its shards (a collective: every worker calls, in the same parameter order). Nothing frozen is gathered, not
    even a tied lm_head, which torch's get_model_state_dict(ignore_frozen_params=True) still gathers (it is not
    among named_parameters, so it cannot tell it is frozen): at a 128k vocabulary that is the whole embedding."""
    state = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            tensor = param.detach()
            state[name] = (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).cpu()
    return state


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, workers: Workers) -> dict:
    """The optimizer's state, whole; a collective under FSDP."""
    if workers.strategy != "fsdp" or not workers.distributed:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                         workers: Workers) -> None:
    if workers.strategy != "fsdp" or not workers.distributed:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
