"""Dry run: what a sweep would run and whether each kind of trial fits its resources; loads no weights.

    python -m lora_tune.sweep dry_run=true                           # the usual way (starts nothing)
    python -m lora_tune.plan experiment=tiny search_space=rank       # the same plan, printed directly
    python -m lora_tune.sweep model=llama3_8b resources=gpu resources.gpu_memory_gb=24 dry_run=true

The model is built on the meta device from its config alone (`model.config_path` when the checkpoint is not
reachable here, e.g. a hub id without a hub) and the adapter is attached there with PEFT, so the trainable
parameter counts are PEFT's own. Memory is an estimate per trial class (bits x rank x target modules x
variant) and per worker (GPU) of the trial: frozen weights as bitsandbytes stores them, adapter weights +
gradients + AdamW state in fp32 (and the optimizer step's temporaries), activations for one worker's share of
the global batch (fused attention assumed; with gradient checkpointing only layer inputs are kept), logits, a
fixed runtime overhead, and on CPU for 4/8 bits the checkpoint read while quantizing. With
resources.workers_per_trial > 1 DDP adds its gradient buckets and communication buffers; FSDP divides weights,
adapter and optimizer state by the workers and adds the two decoder layers it gathers at a time (rank 0 reads the
base into host memory and sends it one tensor at a time: no GPU holds the whole base). On GPUs a 10 %
reserve for the caching allocator's fragmentation is added. The sweep's other work gets rows too: the reference
task (the base's test scoring at 16 bits, then the default-LoRA baseline trial on it) and the winner's scoring.
Checked against measured peak RSS of SmolLM2-135M trials on CPU (all-linear r=8, batch 4 x 80 tokens): in fp32
estimate 2.08 / 2.24 / 2.29 GB vs measured 2.00 / 2.10-2.33 / 2.41 GB at 16 / 4 / 8 bits; in bf16 (auto on a CPU
with native bf16) estimate 1.77 / 2.15 / 2.20 GB vs measured 1.43 / 1.33 / 1.45 GB (an over-estimate: safe).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lora_tune.config import Dimension, SweepConfig, TrialConfig
from lora_tune.errors import ConfigError, fail
from lora_tune.memory import CUDA_CONTEXT_GB, GB
from lora_tune.shipped import MODEL_CONFIGS_DIR as SHIPPED_CONFIGS

# Searched keys that change the trainable parameters or the weight memory: one row per combination.
CLASS_KEYS = ("quant.bits", "peft.r", "peft.target_modules", "peft.use_dora", "peft.method")
# Searched keys that change activation memory: the plan takes the worst case.
ACTIVATION_KEYS = ("train.batch_size", "data.max_seq_len", "model.gradient_checkpointing")
# Python + torch + tokenizer; on a GPU the CUDA context (outside torch's allocator, which memory.claim_gpu caps at
# the share less the context) + cuBLAS workspace and other allocator-side runtime
RUNTIME_OVERHEAD_GB = {"cpu": 1.0, "cuda": CUDA_CONTEXT_GB + 0.5}
COMMS_GB = 0.5  # NCCL / gloo buffers of a worker of a multi-worker trial
FRAGMENTATION = 0.10  # GPU only: reserve for the caching allocator's fragmentation


@dataclass
class TrialClass:
    """One kind of trial and its estimated memory in bytes."""

    bits: int
    r: int
    target_modules: str
    variant: str
    trainable_params: int
    weight_bytes: float
    optimizer_bytes: float
    activation_bytes: float
    total_bytes: float
    fits: bool | None


@dataclass
class Extra:
    """Other work of the sweep that needs a trial's resources: its memory and whether it fits."""

    name: str
    total_bytes: float
    fits: bool | None


@dataclass
class Plan:
    model: str
    architecture: str
    config_source: str
    total_params: int
    device: str
    dimensions: list[str]
    space_size: int | None
    trials: int
    grid_combinations: int
    concurrent: str
    budget_bytes: float | None
    budget_note: str
    micro_batch: str
    workers: str = "1 worker per trial"
    classes: list[TrialClass] = field(default_factory=list)
    extras: list[Extra] = field(default_factory=list)


def architecture_source(model_cfg: Any) -> str:
    """Where the architecture config comes from: model.config_path (path or shipped name) or the checkpoint."""
    if not model_cfg.config_path:
        from lora_tune.embedded import resolve_model_path

        return resolve_model_path(model_cfg.name_or_path)
    path = Path(model_cfg.config_path).expanduser()
    if path.exists():
        return str(path)
    shipped = SHIPPED_CONFIGS / f"{model_cfg.config_path}.json"
    if shipped.exists():
        return str(shipped)
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.json")))
    raise ConfigError([f"model.config_path: {model_cfg.config_path!r} is neither a file, a folder nor a shipped "
                       f"config; accepted: a config.json path, its folder, or one of {names}"])


def load_architecture(model_cfg: Any) -> tuple[Any, str]:
    """(transformers config, where it came from); no weights are read."""
    from transformers import AutoConfig

    source = architecture_source(model_cfg)
    try:
        if source.endswith(".json"):
            import json

            data = json.loads(Path(source).read_text())
            config = AutoConfig.for_model(data.pop("model_type"), **data)
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable hub id, bad JSON, ...: one line for the user
        raise ConfigError([f"model.name_or_path: cannot read the architecture of {model_cfg.name_or_path!r} "
                           f"({str(exc).splitlines()[0][:200]}); accepted: a local checkpoint, or set "
                           "model.config_path to a config.json or a shipped name"]) from None
    return config, source


def trainable_params(config: Any, trial: TrialConfig) -> int:
    """Trainable parameters after PEFT attaches the trial's adapter (on the meta device)."""
    import torch
    from peft import get_peft_model

    from lora_tune.model import meta_model, peft_config

    model = meta_model(config, trial.model.trust_remote_code)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, peft_config(trial.peft, trial.max_steps, model))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def is_quantizable(name: str, module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"


def weight_bytes(model: Any, trial: TrialConfig, dtype_bytes: int) -> float:
    """Frozen base weights as stored: bnb 4-bit (+ absmax), 8-bit (+ row scales), the rest (embeddings, norms,
    lm_head; everything at 16 bits) in the compute dtype."""
    quant = trial.quant
    linear = {id(m.weight) for n, m in model.named_modules() if is_quantizable(n, m)}
    total = 0.0
    for param in model.parameters():
        n = param.numel()
        if quant.bits == 4 and id(param) in linear:
            absmax = n / 64 + n / 64 / 256 * 4 if quant.double_quant else n / 64 * 4
            total += n / 2 + absmax
        elif quant.bits == 8 and id(param) in linear:
            total += n + param.shape[0] * 4
        else:
            total += n * dtype_bytes
    return total


def activation_bytes(config: Any, trial: TrialConfig, dtype_bytes: int, workers: int = 1) -> float:
    """One worker's share of a micro-batch: saved activations plus logits (fused attention; fp32 loss)."""
    tokens = math.ceil(trial.train.batch_size / workers) * trial.data.max_seq_len
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    layers = config.num_hidden_layers
    per_layer = tokens * (10 * hidden + 4 * inter) * dtype_bytes
    if trial.model.gradient_checkpointing:
        body = layers * tokens * hidden * dtype_bytes + per_layer  # layer inputs + one layer recomputed
    else:
        body = layers * per_layer
    logits = tokens * config.vocab_size * (dtype_bytes + 4 + (4 if dtype_bytes < 4 else 0))
    return body + logits


def loading_bytes(config: Any, model: Any, trial: TrialConfig, device: str) -> float:
    """CPU trials quantizing on load keep the checkpoint's pages resident too (measured on SmolLM2-135M:
    peak RSS 2.1-2.33 GB at 4 bits and 2.41 GB at 8 bits vs 2.0 GB at 16 bits); on GPUs that copy is in host RAM."""
    if device != "cpu" or trial.quant.bits not in (4, 8):
        return 0.0
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    per_param = 2 if any(t in stored for t in ("bfloat16", "float16")) else 4
    return float(sum(p.numel() for p in model.parameters()) * per_param)


def compute_bytes(trial: TrialConfig, device: str) -> int:
    """Bytes per element the trial computes in: quant.compute_dtype, else train.precision as a trial on `device`
    resolves it (auto: 2 on GPUs, bf16 or fp16; on a CPU, this machine's answer stands for the workers')."""
    import torch

    from lora_tune import precision as precisions

    precision = precisions.resolve(trial.train.precision, torch.device(device))
    return precisions.compute_dtype(trial.quant.compute_dtype, precision).itemsize


def search_values(dim: Dimension) -> list[Any]:
    """The values a dimension can take (a numeric range: its two ends)."""
    from lora_tune.space import decode_value

    if dim.type in ("choice", "grid"):
        return [decode_value(v) if isinstance(v, str) else v for v in dim.values]
    low, high = dim.low, dim.high
    if dim.type.endswith("int"):
        return [int(low), int(high) - 1]
    return [low, high]


def class_configs(cfg: SweepConfig) -> list[TrialConfig]:
    """One trial config per combination of searched CLASS_KEYS, at the worst-case activation settings."""
    dims = [d for d in cfg.search_space.values() if d.key in CLASS_KEYS]
    worst: dict[str, Any] = {}
    for dim in cfg.search_space.values():
        if dim.key in ACTIVATION_KEYS:
            worst[dim.key] = max(search_values(dim))
    configs = []
    for combo in itertools.product(*(search_values(d) for d in dims)):
        try:
            configs.append(cfg.trial_config({**worst, **{d.key: v for d, v in zip(dims, combo)}}))
        except ConfigError:
            continue  # sweep validation already rejects spaces with impossible combinations
    return configs


def variant_name(trial: TrialConfig) -> str:
    if trial.peft.method == "adalora":
        return "adalora"
    return "+".join(["dora"] * trial.peft.use_dora + ["rslora"] * trial.peft.use_rslora) or "lora"


def grid_combinations(cfg: SweepConfig) -> int:
    grid = cfg.search_alg.name == "grid"
    return math.prod(len(d.values) for d in cfg.search_space.values()
                     if d.type == "grid" or (grid and d.type == "choice"))


def machine_ram_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def budget(cfg: SweepConfig) -> tuple[float | None, str]:
    """Memory one trial may use: its GPU share, or this machine's RAM share of its CPUs."""
    res = cfg.resources
    if res.gpus_per_trial:
        per_gpu = res.gpu_memory_gb * GB if res.gpu_memory_gb else local_gpu_bytes()
        if per_gpu is None:
            return None, "GPU memory unknown (no GPU here): set resources.gpu_memory_gb"
        share = per_gpu * res.gpus_per_trial
        return share, f"{res.gpus_per_trial:g} x {per_gpu / GB:.0f} GB GPU"
    cpus = res.num_cpus or os.cpu_count() or 1
    share = machine_ram_bytes() * min(1.0, res.cpus_per_trial / cpus)
    return share, f"RAM share of this machine ({res.cpus_per_trial:g} of {cpus} CPUs)"


def local_gpu_bytes() -> float | None:
    import torch

    return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


def concurrency(cfg: SweepConfig) -> str:
    cap = cfg.search_alg.max_concurrent
    if cfg.ray.address:
        return f"as many as the cluster fits{f' (at most {cap})' if cap else ''}"
    if cfg.resources.gpus_per_trial:
        import torch

        gpus = torch.cuda.device_count()
        if not gpus:
            return "none here (no GPU on this machine): use a cluster, ray.address=..."
        at_once = int(gpus / cfg.resources.gpus_per_trial)
    else:
        at_once = int((cfg.resources.num_cpus or os.cpu_count() or 1) / cfg.resources.cpus_per_trial)
    return f"{min(at_once, cap) if cap else at_once} at a time on this machine"


def describe(name: str, dim: Dimension) -> str:
    from lora_tune.space import encode_value

    if dim.type in ("choice", "grid"):
        domain = f"{dim.type} [{', '.join(str(encode_value(v)) for v in dim.values)}]"
    else:
        domain = f"{dim.type} [{dim.low:g}, {dim.high:g}]" + (f" step {dim.q:g}" if dim.q else "")
    return f"{name:<16} {dim.key:<22} {domain}"


def largest_tensor_bytes(model: Any, dtype_bytes: int) -> float:
    """The largest weight of the 16-bit base (FSDP refuses quantized ones): usually the embedding."""
    return float(max(p.numel() for p in model.parameters()) * dtype_bytes)


def largest_layer_bytes(model: Any, weights: float) -> float:
    """An FSDP worker gathers one decoder layer while the next is prefetched: the base's weight per layer."""
    layers = getattr(model.config, "num_hidden_layers", 1) or 1
    return weights / layers


def worker_memory(config: Any, model: Any, trial: TrialConfig, device: str, res: Any) -> dict[str, float]:
    """Estimated peak bytes of one worker of a trial: weights, optimizer, activations, runtime, total."""
    workers = res.workers_per_trial
    fsdp = res.strategy == "fsdp" and workers > 1
    shard = workers if fsdp else 1
    dtype_bytes = compute_bytes(trial, device)
    trainable = trainable_params(config, trial)
    frozen = weight_bytes(model, trial, dtype_bytes)
    weights = frozen / shard + (2 * largest_layer_bytes(model, frozen) if fsdp else 0.0) + trainable * 4 / shard
    moments = 2 if trial.train.optimizer == "adamw_8bit" else 8  # two AdamW moments, 8-bit or fp32
    optimizer = trainable * (4 + moments) / shard  # fp32 gradients + moments
    runtime = RUNTIME_OVERHEAD_GB[device] * GB + loading_bytes(config, model, trial, device)
    if device == "cuda":
        runtime += trainable * 8 / shard + trainable * (2 if dtype_bytes < 4 else 0)  # step temporaries, autocast
    if workers > 1:
        runtime += COMMS_GB * GB + (trainable * 4 if not fsdp else 0.0)  # DDP keeps a copy of the gradients
    activations = activation_bytes(config, trial, dtype_bytes, workers)
    reserve = 1 + FRAGMENTATION if device == "cuda" else 1
    total = (weights + optimizer + activations + runtime) * reserve
    if fsdp:  # while loading, a worker holds its shards and the one whole tensor being sent (train.sharded_model)
        total = max(total, (weights + largest_tensor_bytes(model, dtype_bytes) + runtime) * reserve)
    return {"trainable": trainable, "weights": weights, "optimizer": optimizer, "activations": activations,
            "total": total}


def scoring_bytes(config: Any, model: Any, trial: TrialConfig, device: str) -> float:
    """A test scoring (base [+ adapter]) at one worker: weights, an evaluation batch, the KV cache of generation."""
    dtype_bytes = compute_bytes(trial, device)
    tokens = trial.train.eval_batch_size * (trial.data.max_seq_len + trial.data.max_new_tokens)
    heads = getattr(config, "num_attention_heads", 1)
    kv_dim = getattr(config, "num_key_value_heads", heads) * config.hidden_size // heads
    kv_cache = 2 * config.num_hidden_layers * tokens * kv_dim * dtype_bytes
    forward = tokens * (config.hidden_size * 4 + getattr(config, "intermediate_size", 4 * config.hidden_size))
    logits = trial.train.eval_batch_size * config.vocab_size * 4 * 2  # the last position's, and its softmax
    total = weight_bytes(model, trial, dtype_bytes) + kv_cache + forward * dtype_bytes + logits
    total += RUNTIME_OVERHEAD_GB[device] * GB + loading_bytes(config, model, trial, device)
    return total * (1 + FRAGMENTATION if device == "cuda" else 1)


def extra_work(cfg: SweepConfig, config: Any, model: Any, device: str, limit: float | None) -> list[Extra]:
    """The sweep's other work, on one trial's (one worker's) resources: the reference task and the winner's
    test scoring (never at the same time as each other on one worker)."""
    from dataclasses import replace as with_fields

    from lora_tune.baseline import base_config, default_lora_config

    one = with_fields(cfg.resources, workers_per_trial=1)
    rows = [("reference: base model scored on the test split (16-bit)", scoring_bytes(config, model,
                                                                                      base_config(cfg), device))]
    if cfg.eval.baseline:
        baseline = default_lora_config(cfg)
        rows.append(("reference: default-LoRA baseline trial (16-bit, then scored)",
                     max(worker_memory(config, model, baseline, device, one)["total"],
                         scoring_bytes(config, model, baseline, device))))
    winners = class_configs(cfg) or [cfg.trial_config()]
    rows.append(("the winner scored on the test split", max(scoring_bytes(config, model, t, device) for t in winners)))
    return [Extra(name, total, None if limit is None else total <= limit) for name, total in rows]


def make_plan(cfg: SweepConfig) -> Plan:
    """Everything the dry run prints; raises ConfigError for target modules the model does not have."""
    from lora_tune.model import check_targets, meta_model
    from lora_tune.placement import requirement
    from lora_tune.space import encode_value, space_size

    config, source = load_architecture(cfg.model)
    model = meta_model(config, cfg.model.trust_remote_code)
    problems = check_targets(model, cfg.peft, cfg.search_space)
    if problems:
        raise ConfigError(problems)
    device = "cuda" if cfg.resources.gpus_per_trial else "cpu"
    limit, note = budget(cfg)
    classes = []
    for trial in class_configs(cfg):
        parts = worker_memory(config, model, trial, device, cfg.resources)
        classes.append(TrialClass(trial.quant.bits, trial.peft.r, str(encode_value(trial.peft.target_modules)),
                                  variant_name(trial), int(parts["trainable"]), parts["weights"], parts["optimizer"],
                                  parts["activations"], parts["total"],
                                  None if limit is None else parts["total"] <= limit))
    grid = grid_combinations(cfg)
    worst = class_configs(cfg)[0] if classes else cfg
    res = cfg.resources
    workers = (f"{res.workers_per_trial} workers per trial ({res.strategy}, {res.placement}: {requirement(res)}); "
               "memory per worker" if res.workers_per_trial > 1 else f"1 worker per trial ({requirement(res)})")
    if res.workers_per_trial > 1 and res.strategy == "fsdp":
        host_gb = weight_bytes(model, worst, compute_bytes(worst, device)) / GB
        workers += (f" (rank 0 reads the base into host memory, {host_gb:.1f} GB; each GPU only "
                    "ever holds its shards and one tensor in flight)")
    return Plan(
        model=cfg.model.name_or_path, architecture=type(model).__name__, config_source=source,
        total_params=sum(p.numel() for p in model.parameters()), device=device,
        dimensions=[describe(n, d) for n, d in cfg.search_space.items()], space_size=space_size(cfg.search_space),
        trials=cfg.num_samples * grid, grid_combinations=grid, concurrent=concurrency(cfg),
        budget_bytes=limit, budget_note=note, classes=classes, workers=workers,
        extras=extra_work(cfg, config, model, device, limit),
        micro_batch=(f"batch {worst.train.batch_size} x {worst.data.max_seq_len} tokens, gradient checkpointing "
                     f"{'on' if worst.model.gradient_checkpointing else 'off'}"),
    )


def format_plan(plan: Plan, cfg: SweepConfig) -> str:
    size = "continuous" if plan.space_size is None else f"{plan.space_size} distinct configurations"
    lines = [
        f"model: {plan.model} ({plan.architecture}, {plan.total_params / 1e6:,.1f}M parameters; "
        f"architecture from {plan.config_source})",
        f"search space: {len(plan.dimensions)} dimensions, {size}",
        *[f"  {line}" for line in plan.dimensions],
        f"trials: {plan.trials} (num_samples={cfg.num_samples} x {plan.grid_combinations} grid combinations); "
        f"scheduler {cfg.scheduler.name}, search {cfg.search_alg.name}, max_steps {cfg.max_steps}; "
        f"{plan.concurrent}",
        f"per trial on {plan.device}: {plan.micro_batch}; {plan.workers}; budget "
        + (f"{plan.budget_bytes / GB:.1f} GB ({plan.budget_note})" if plan.budget_bytes else plan.budget_note),
        f"estimated memory per trial class (GB; total includes {RUNTIME_OVERHEAD_GB[plan.device]:.1f} GB runtime"
        + (f" and a {FRAGMENTATION:.0%} allocator reserve" if plan.device == "cuda" else "") + "):",
    ]
    header = f"  {'bits':>4} {'r':>4}  {'target_modules':<34} {'variant':<11} {'trainable':>11} " \
             f"{'weights':>8} {'optim':>7} {'activ':>7} {'total':>7}  fits"
    lines.append(header)
    for c in plan.classes:
        fits = "?" if c.fits is None else ("yes" if c.fits else "NO")
        lines.append(f"  {c.bits:>4} {c.r:>4}  {c.target_modules:<34} {c.variant:<11} {c.trainable_params:>11,} "
                     f"{c.weight_bytes / GB:>8.2f} {c.optimizer_bytes / GB:>7.2f} {c.activation_bytes / GB:>7.2f} "
                     f"{c.total_bytes / GB:>7.2f}  {fits}")
    lines.append("other work of the sweep, on one trial's resources (GB):")
    for extra in plan.extras:
        fits = "?" if extra.fits is None else ("yes" if extra.fits else "NO")
        lines.append(f"  {extra.name:<66} {extra.total_bytes / GB:>7.2f}  {fits}")
    lines.append(summary_line(plan))
    return "\n".join(lines)


def summary_line(plan: Plan) -> str:
    misfits = [c for c in plan.classes if c.fits is False]
    if any(c.fits is None for c in plan.classes):
        verdict = "fit unknown (set resources.gpu_memory_gb)"
    elif misfits:
        verdict = f"{len(misfits)} of {len(plan.classes)} trial classes do NOT fit"
    else:
        verdict = f"all {len(plan.classes)} trial classes fit"
    extra = [e.name.split(":")[0] for e in plan.extras if e.fits is False]
    if extra:
        verdict += f" ({len(extra)} other piece(s) of work do NOT fit)"
    return f"lora_tune: dry run: {plan.trials} trials, {verdict}; nothing was started"


def print_plan(cfg: SweepConfig) -> Plan:
    """Build and print the plan (what `dry_run=true` does); raises ConfigError on bad input."""
    plan = make_plan(cfg)
    print(format_plan(plan, cfg))
    return plan


def main(argv: list[str] | None = None) -> None:
    from lora_tune.compose import compose_config, split_config_dirs

    config_dirs, args = split_config_dirs(list(sys.argv[1:] if argv is None else argv))
    try:
        print_plan(replace(compose_config(args, config_dirs), dry_run=True))
    except ConfigError as exc:
        fail(exc.problems)


if __name__ == "__main__":
    main()
