"""FSDP2 on CPU (gloo, two processes): saving the adapter of a sharded trial gathers the adapter, never the base.

    .venv/bin/python -m pytest -q tests/test_sharding.py      # ~20 s: two processes load the tiny model
"""

from __future__ import annotations

import faulthandler
import json
import socket
from datetime import timedelta
from pathlib import Path

import torch.multiprocessing as mp


def join(rank: int, port: int) -> None:
    """Join the two-process gloo group; a crash (one CI run saw SIGABRT in rank 1 after its collectives) prints
    every thread's Python stack, so the next one says where it happened."""
    import torch.distributed as dist

    faulthandler.enable(all_threads=True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))  # a failed rank stops its peer in minutes, not 30


def leave() -> None:
    """Wait until both ranks are done with every collective, then tear the group down: no rank closes its gloo
    connections while its peer may still be using them."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def shard_and_save(rank: int, port: int, out: str) -> None:
    import torch

    from lora_tune import distributed
    from lora_tune import model as models
    from lora_tune.config import PeftConfig, QuantConfig
    from lora_tune.embedded import TINY

    join(rank, port)
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
        leave()


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

    from lora_tune import distributed
    from lora_tune import model as models
    from lora_tune.config import PeftConfig, QuantConfig
    from lora_tune.embedded import TINY

    join(rank, port)
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
        leave()


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


def load_sharded(rank: int, port: int, out: str) -> None:
    import torch

    from lora_tune import model as models
    from lora_tune import precision as precisions
    from lora_tune import train
    from lora_tune.compose import compose_config
    from lora_tune.distributed import Workers

    join(rank, port)
    try:
        cfg = compose_config(["experiment=tiny", "quant.bits=16", "train.precision=bf16"]).trial_config()
        precision = precisions.resolve("bf16", torch.device("cpu"))
        loads = []
        real_load = models.load_base
        models.load_base = lambda *a, **k: loads.append(a[0]) or real_load(*a, **k)
        model, loss = train.sharded_model(cfg, Workers.current("fsdp"), precision, None)
        ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
        logits = model(input_ids=ids).logits.float()
        base = model.get_base_model()
        state = {n: p.full_tensor() if hasattr(p, "full_tensor") else p for n, p in model.state_dict().items()}
        found = {"loads": loads, "meta": [n for n, t in state.items() if t.is_meta],
                 "tied": base.lm_head.weight is base.model.embed_tokens.weight,
                 "sharded": all(hasattr(p, "full_tensor") for p in model.parameters())}
        if rank == 0:  # the reference: the whole model loaded and adapted in one process, as a 1-worker trial does
            whole = train.with_adapter(real_load(cfg.model.name_or_path, cfg.quant, precision), cfg, None)
            reference = whole.state_dict()
            found["differ"] = sorted(n for n in reference if not torch.equal(reference[n], state[n]))
            found["same_keys"] = sorted(reference) == sorted(state)
            found["logit_gap"] = float((whole(input_ids=ids).logits.float() - logits).abs().max())
        Path(f"{out}.{rank}").write_text(json.dumps(found))
    finally:
        leave()


def test_a_sharded_trial_loads_the_base_on_rank_0_only_and_gets_the_same_model(tmp_path: Path) -> None:
    """FSDP loading: only rank 0 reads the checkpoint (into host memory); every worker ends with its shards of
    exactly the model a single process loads and adapts (base, seeded adapter, rotary buffers), nothing left
    on the meta device, the tied lm_head tied again after the first forward."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "loaded"
    mp.spawn(load_sharded, args=(port, str(out)), nprocs=2, join=True)
    rank0, rank1 = (json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1))
    assert rank0["loads"] == ["embedded:tiny"] and rank1["loads"] == []
    for found in (rank0, rank1):
        assert found["sharded"] and found["meta"] == [] and found["tied"]
    assert rank0["same_keys"] and rank0["differ"] == [] and rank0["logit_gap"] == 0.0
