"""FSDP2 on CPU (gloo, two processes): saving the adapter of a sharded trial gathers the adapter, never the base.

    .venv/bin/python -m pytest -q tests/test_sharding.py      # ~20 s: two processes load the tiny model
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch.multiprocessing as mp


def shard_and_save(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lora_tune import distributed
    from lora_tune import model as models
    from lora_tune.config import PeftConfig, QuantConfig
    from lora_tune.embedded import TINY

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = models.attach_adapter(models.load_base(TINY, QuantConfig(bits=16)), PeftConfig(r=4), 10)
        trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        distributed.shard_fsdp(model, model)
        state = distributed.trainable_state_dict(model)
        sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
        if rank == 0:
            Path(out).write_text(json.dumps({"trainable": trainable,
                                             "saved": {k: tuple(v.shape) for k, v in state.items()},
                                             "on_cpu": all(v.device.type == "cpu" for v in state.values()),
                                             "sharded": sharded}))
    finally:
        dist.destroy_process_group()


def test_a_sharded_trial_gathers_only_its_adapter_to_save_it(tmp_path: Path) -> None:
    """The saved state is exactly the trainable parameters, whole (not shards), on CPU; nothing frozen is gathered
    (torch's get_model_state_dict(ignore_frozen_params=True) still gathered the tied lm_head)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "state.json"
    mp.spawn(shard_and_save, args=(port, str(out)), nprocs=2, join=True)
    found = json.loads(out.read_text())
    assert found["sharded"]  # the parameters are FSDP2 shards (DTensors)
    assert found["saved"] == found["trainable"] and found["on_cpu"]  # whole tensors, the tied lm_head not among them
    assert any("lora_A" in k for k in found["saved"])


def overflow_on_rank_1(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lora_tune import distributed
    from lora_tune import model as models
    from lora_tune.config import PeftConfig, QuantConfig
    from lora_tune.embedded import TINY

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = models.attach_adapter(models.load_base(TINY, QuantConfig(bits=16)), PeftConfig(r=4), 10)
        distributed.shard_fsdp(model, model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
        scaler.scale(model(input_ids=ids, labels=ids).loss).backward()
        if rank == 1:  # only this rank's shard of one gradient overflows
            trainable[0].grad.to_local().fill_(float("inf"))
        before = [p.detach().full_tensor().clone() for p in trainable]
        scaler.step(optimizer)
        scaler.update()
        moved = any(not torch.equal(b, p.detach().full_tensor()) for b, p in zip(before, trainable))
        Path(f"{out}.{rank}").write_text(json.dumps({"scale": scaler.get_scale(), "moved": moved}))
    finally:
        dist.destroy_process_group()


def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    """fp16 under FSDP2 with torch's plain GradScaler: the gradients are DTensors, and DTensor's dispatch reduces
    the overflow flag over the mesh (torch/distributed/tensor/_dispatch.py found_inf_reduce_handler), so ranks
    never disagree on a skipped step (no ShardedGradScaler needed; a disagreement would desynchronise them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "scaler"
    mp.spawn(overflow_on_rank_1, args=(port, str(out)), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1] == {"scale": 512.0, "moved": False}, ranks
