"""Typed configuration and validation, pure Python (no torch, Ray or Hydra import at module top).

Hydra composes a nested dict (see conf/); `SweepConfig.from_dict` turns it into frozen dataclasses and
collects *every* problem it finds into one `ConfigError`, each problem a single line naming the key and
what is accepted. A trial's configuration is the sweep's with the sampled values set by their dotted
keys (`with_overrides`), validated the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

BITS = (4, 8, 16)
PEFT_METHODS = ("lora", "adalora")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANT_TYPES = ("nf4", "fp4")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("auto", "adamw", "paged_adamw")
SCHEDULERS = ("asha", "fifo", "pbt")
SEARCH_ALGS = ("random", "grid", "optuna")
MODES = ("min", "max")
WANDB_MODES = ("online", "offline", "disabled", "auto")
DIMENSION_TYPES = (
    "choice", "grid", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint",
)
# Metrics every trial reports at each evaluation (see train.py).
TRIAL_METRICS = ("eval_loss", "eval_exact_match", "train_loss")


class ConfigError(ValueError):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Problems:
    """Collects problems under a key prefix instead of raising at the first one."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.prefix}{key}: {message}")

    def check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.add(key, message)


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from a dict, reporting unknown keys and validation problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a mapping, got {type(data).__name__}")
        return None
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key; accepted: {', '.join(sorted(names))}")
    kwargs = {k: v for k, v in data.items() if k in names}
    nested = nested_sections(cls)
    for name, sub_cls in nested.items():
        kwargs[name] = _build(sub_cls, data.get(name), f"{prefix}{name}.", problems)
        if kwargs[name] is None:
            kwargs[name] = sub_cls()
    obj = cls(**kwargs)
    found = _Problems(prefix)
    obj.validate(found)
    problems.extend(found.items)
    return obj


def nested_sections(cls: type) -> dict[str, type]:
    """The fields of `cls` that are config sections themselves (their default is a dataclass)."""
    return {f.name: f.default_factory for f in fields(cls)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "embedded:smollm2-135m"  # local dir, GGUF dir, embedded:<name>, or hub id
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # Architecture config for the dry run when the checkpoint is not reachable here (a hub id without a hub):
    # a config.json path, a folder holding one, or a name shipped in lora_tune/model_configs/ (llama3_8b).
    config_path: str | None = None

    def validate(self, p: _Problems) -> None:
        p.check(isinstance(self.name_or_path, str) and bool(self.name_or_path), "name_or_path",
                "must be a non-empty string (local dir, GGUF dir, embedded:smollm2-135m, embedded:tiny or hub id)")


@dataclass(frozen=True)
class PeftConfig:
    method: str = "lora"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: Any = ("q_proj", "v_proj")  # a list of module names or "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    # AdaLoRA only: rank budget shrinks from init_r towards r between these fractions of max_steps.
    adalora_init_r: int = 12
    adalora_tinit_frac: float = 0.1
    adalora_tfinal_frac: float = 0.2

    def validate(self, p: _Problems) -> None:
        p.check(self.method in PEFT_METHODS, "method", f"got {self.method!r}; accepted: {', '.join(PEFT_METHODS)}")
        p.check(_positive_int(self.r), "r", f"got {self.r!r}; accepted: an integer > 0")
        p.check(_is_number(self.alpha) and self.alpha > 0, "alpha", f"got {self.alpha!r}; accepted: a number > 0")
        p.check(_is_number(self.dropout) and 0 <= self.dropout < 1, "dropout",
                f"got {self.dropout!r}; accepted: a number in [0, 1)")
        p.check(self.bias in ("none", "all", "lora_only"), "bias", f"got {self.bias!r}; accepted: none, all, lora_only")
        tm = self.target_modules
        ok = tm == "all-linear" or (
            isinstance(tm, (list, tuple)) and len(tm) > 0 and all(isinstance(m, str) and m for m in tm)
        )
        p.check(ok, "target_modules", f"got {tm!r}; accepted: a non-empty list of module names or 'all-linear'")
        if self.method == "adalora":
            p.check(not self.use_dora, "use_dora",
                    "PEFT cannot combine DoRA with AdaLoRA; accepted: false with adalora")
            p.check(not self.use_rslora, "use_rslora",
                    "PEFT's AdaLoRA ignores rsLoRA scaling (alpha / r always); accepted: false with adalora")
            p.check(_positive_int(self.adalora_init_r) and self.adalora_init_r >= (self.r or 0),
                    "adalora_init_r", "accepted: an integer >= peft.r")

    def target_list(self) -> list[str] | str:
        return self.target_modules if self.target_modules == "all-linear" else list(self.target_modules)


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU

    def validate(self, p: _Problems) -> None:
        p.check(self.bits in BITS and not isinstance(self.bits, bool), "bits",
                f"got {self.bits!r}; accepted: 4, 8, 16")
        p.check(self.quant_type in QUANT_TYPES, "quant_type", f"got {self.quant_type!r}; accepted: nf4, fp4")
        p.check(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype",
                f"got {self.compute_dtype!r}; accepted: {', '.join(COMPUTE_DTYPES)}")


@dataclass(frozen=True)
class DataConfig:
    path: str = "data/dates"  # a folder of <split>.jsonl|parquet files, or a hub dataset id on a cluster
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    system_prompt: str | None = None  # None: the chat template's default
    max_seq_len: int = 96
    max_train_examples: int | None = None
    eval_examples: int = 64  # validation examples used for eval loss at each evaluation
    exact_match_examples: int = 32  # validation examples generated for exact match at each evaluation
    test_examples: int | None = 200  # test examples for the final exact match (None: all)
    max_new_tokens: int = 16

    def validate(self, p: _Problems) -> None:
        p.check(isinstance(self.path, str) and bool(self.path), "path", "accepted: a folder or dataset id")
        p.check(_positive_int(self.max_seq_len) and self.max_seq_len >= 16, "max_seq_len", "accepted: an integer >= 16")
        for key in ("eval_examples", "exact_match_examples", "max_new_tokens"):
            value = getattr(self, key)
            p.check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
                    f"got {value!r}; accepted: an integer >= 0")
        for key in ("max_train_examples", "test_examples"):
            value = getattr(self, key)
            p.check(value is None or _positive_int(value), key, f"got {value!r}; accepted: null or an integer > 0")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    optimizer: str = "auto"  # auto: paged AdamW on GPU for 4/8-bit bases, torch AdamW otherwise
    max_grad_norm: float = 1.0
    eval_every: int = 10
    checkpoint_every: int | None = None  # None: at every evaluation
    num_threads: int | None = None  # torch threads; None: the trial's CPU share

    def validate(self, p: _Problems) -> None:
        p.check(_is_number(self.lr) and self.lr > 0, "lr", f"got {self.lr!r}; accepted: a number > 0")
        for key in ("batch_size", "grad_accum", "eval_every"):
            value = getattr(self, key)
            p.check(_positive_int(value), key, f"got {value!r}; accepted: an integer > 0")
        p.check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "accepted: a number >= 0")
        p.check(_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio",
                "accepted: a number in [0, 1)")
        p.check(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler",
                f"got {self.lr_scheduler!r}; accepted: {', '.join(LR_SCHEDULERS)}")
        p.check(self.optimizer in OPTIMIZERS, "optimizer", f"got {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        p.check(_is_number(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm", "accepted: a number >= 0")
        p.check(self.checkpoint_every is None or _positive_int(self.checkpoint_every), "checkpoint_every",
                "accepted: null or an integer > 0")
        p.check(self.num_threads is None or _positive_int(self.num_threads), "num_threads",
                "accepted: null or an integer > 0")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one fine-tuning trial needs; `train.run_trial` takes this."""

    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_steps: int = 60
    seed: int = 0


    def validate(self, p: _Problems) -> None:
        p.check(_positive_int(self.max_steps), "max_steps", f"got {self.max_steps!r}; accepted: an integer > 0")
        if self.peft.method == "adalora":  # PEFT's AdaLoRA needs one rank-budget step before its final phase
            p.check(not _positive_int(self.max_steps) or self.max_steps >= 2, "max_steps",
                    f"got {self.max_steps!r}; accepted: an integer >= 2 with peft.method=adalora")
        p.check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "accepted: an integer")

    @classmethod
    def from_dict(cls, data: dict) -> TrialConfig:
        problems: list[str] = []
        cfg = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def to_dict(self) -> dict:
        return to_dict(self)


@dataclass(frozen=True)
class Dimension:
    """One search dimension: the config key it sets and a ray.tune domain description."""

    key: str = ""
    type: str = "choice"
    values: Any = None
    low: float | None = None
    high: float | None = None
    q: float | None = None

    def validate(self, p: _Problems) -> None:
        p.check(bool(re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", self.key or "")), "key",
                f"got {self.key!r}; accepted: a dotted config key such as peft.r or train.lr")
        p.check(self.type in DIMENSION_TYPES, "type", f"got {self.type!r}; accepted: {', '.join(DIMENSION_TYPES)}")
        if self.type in ("choice", "grid"):
            p.check(isinstance(self.values, (list, tuple)) and len(self.values) > 0, "values",
                    "accepted: a non-empty list")
            return
        p.check(_is_number(self.low) and _is_number(self.high) and self.low < self.high, "low/high",
                f"got low={self.low!r} high={self.high!r}; accepted: numbers with low < high")
        if self.type.startswith("log") or self.type == "qloguniform":
            p.check(_is_number(self.low) and self.low > 0, "low", "accepted: a number > 0 for a log scale")
        if self.type.startswith("q"):
            p.check(_is_number(self.q) and self.q > 0, "q", "accepted: a number > 0")


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "asha"
    grace_period: int = 10  # ASHA: steps every trial runs before it may be stopped
    reduction_factor: float = 3  # ASHA: keep the top 1/reduction_factor at each rung
    brackets: int = 1
    perturbation_interval: int = 20  # PBT: steps between exploit/explore
    mutate: tuple = ("train.lr",)  # PBT: keys resampled from the search space when perturbing

    def validate(self, p: _Problems) -> None:
        p.check(self.name in SCHEDULERS, "name", f"got {self.name!r}; accepted: {', '.join(SCHEDULERS)}")
        p.check(_positive_int(self.grace_period), "grace_period", "accepted: an integer > 0")
        p.check(_is_number(self.reduction_factor) and self.reduction_factor > 1, "reduction_factor",
                "accepted: a number > 1")
        p.check(_positive_int(self.brackets), "brackets", "accepted: an integer > 0")
        p.check(_positive_int(self.perturbation_interval), "perturbation_interval", "accepted: an integer > 0")


@dataclass(frozen=True)
class SearchAlgConfig:
    name: str = "random"
    max_concurrent: int | None = None  # cap on trials running at once; None: as many as resources allow

    def validate(self, p: _Problems) -> None:
        p.check(self.name in SEARCH_ALGS, "name", f"got {self.name!r}; accepted: {', '.join(SEARCH_ALGS)}")
        p.check(self.max_concurrent is None or _positive_int(self.max_concurrent), "max_concurrent",
                "accepted: null or an integer > 0")


@dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    num_cpus: int | None = None  # local Ray only: CPUs Ray may use; None: all of this machine's
    gpu_memory_gb: float | None = None  # memory of one GPU, for the dry run's fit check; None: this machine's GPU

    def validate(self, p: _Problems) -> None:
        p.check(_is_number(self.cpus_per_trial) and self.cpus_per_trial > 0, "cpus_per_trial",
                "accepted: a number > 0")
        ok = _is_number(self.gpus_per_trial) and self.gpus_per_trial >= 0
        ok = ok and (self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer())
        p.check(ok, "gpus_per_trial", "accepted: 0, a fraction of one GPU, or a whole number of GPUs")
        p.check(self.num_cpus is None or _positive_int(self.num_cpus), "num_cpus", "accepted: null or an integer > 0")
        p.check(self.gpu_memory_gb is None or (_is_number(self.gpu_memory_gb) and self.gpu_memory_gb > 0),
                "gpu_memory_gb", f"got {self.gpu_memory_gb!r}; accepted: null or a number of GB > 0")


def _ray_address(address: Any) -> bool:
    """auto, HOST:PORT, ray://HOST:PORT (Ray Client) or http(s)://HOST:PORT (a dashboard: Jobs API)."""
    if not isinstance(address, str):
        return False
    return address == "auto" or bool(re.fullmatch(r"((ray|https?)://)?[A-Za-z0-9_.\-\[\]:]+(:\d+)?/?", address))


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: local Ray; auto/HOST:PORT: join a cluster; http://HOST:8265: submit a job
    storage_path: str | None = None  # where results live; None: output_dir
    max_failures: int = 2  # retries per trial
    num_to_keep: int = 2  # checkpoints kept per trial (the best by metric and the latest)
    pip: tuple = ()  # http address only: pip requirements installed for the job; empty: the cluster image's

    def validate(self, p: _Problems) -> None:
        p.check(_positive_int(self.num_to_keep), "num_to_keep", f"got {self.num_to_keep!r}; accepted: an integer > 0")
        p.check(self.address is None or _ray_address(self.address), "address",
                f"got {self.address!r}; accepted: null, auto, HOST:PORT, ray://HOST:PORT or http://HOST:8265")
        p.check(isinstance(self.pip, (list, tuple)) and all(isinstance(r, str) and r for r in self.pip), "pip",
                f"got {self.pip!r}; accepted: a list of pip requirement strings")
        p.check(isinstance(self.max_failures, int) and self.max_failures >= -1, "max_failures",
                "accepted: an integer >= -1 (-1: retry forever)")


@dataclass(frozen=True)
class EvalConfig:
    """What the sweep scores on the test split after the winner is picked."""

    baseline: bool = False  # also train the default LoRA (r=8, alpha=16, q_proj+v_proj, 16-bit, same max_steps)

    def validate(self, p: _Problems) -> None:
        p.check(isinstance(self.baseline, bool), "baseline", f"got {self.baseline!r}; accepted: true, false")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "auto"  # auto: online when an API key is set, offline otherwise
    project: str = "lora_tune"
    entity: str | None = None
    registry: str = "model"  # W&B Registry name: wandb-registry-<registry>
    collection: str = "lora-adapters"  # collection inside the registry

    def validate(self, p: _Problems) -> None:
        p.check(self.mode in WANDB_MODES, "mode", f"got {self.mode!r}; accepted: {', '.join(WANDB_MODES)}")
        p.check(isinstance(self.project, str) and bool(self.project), "project", "accepted: a non-empty string")


@dataclass(frozen=True)
class SweepConfig(TrialConfig):
    """The whole sweep: the trial defaults plus how to search, schedule and record."""

    experiment: str = "quickstart"
    sweep_name: str = "sweep"
    output_dir: str = "runs"
    num_samples: int = 8
    metric: str = "eval_loss"
    mode: str = "min"
    search_space: dict = field(default_factory=dict)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search_alg: SearchAlgConfig = field(default_factory=SearchAlgConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resume: str | None = None
    retry_errored: bool = False  # with resume: run errored trials again (from their last checkpoint)
    dry_run: bool = False
    detach: bool = False
    attach: str | None = None  # http ray.address only: a job id to stream again
    verbose: int = 1  # Ray Tune progress: 0 silent, 1 table every few seconds, 2 per result

    def validate(self, p: _Problems) -> None:
        super().validate(p)
        p.check(isinstance(self.sweep_name, str) and bool(re.fullmatch(r"[A-Za-z0-9_.=-]+", self.sweep_name)),
                "sweep_name",
                f"got {self.sweep_name!r}; accepted: letters, digits and _ . = -")
        p.check(_positive_int(self.num_samples), "num_samples", f"got {self.num_samples!r}; accepted: an integer >= 1")
        p.check(self.mode in MODES, "mode", f"got {self.mode!r}; accepted: min, max")
        p.check(self.metric in TRIAL_METRICS, "metric",
                f"got {self.metric!r}; accepted (what trials report): {', '.join(TRIAL_METRICS)}")
        submits = str(self.ray.address or "").startswith(("http://", "https://"))
        p.check(not self.detach or submits, "detach", "needs a job address; accepted: with ray.address=http://HOST:8265")
        p.check(self.attach is None or (submits and isinstance(self.attach, str) and bool(self.attach.strip())),
                "attach", "accepted: a job id, with ray.address=http://HOST:8265")

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        problems: list[str] = []
        data = dict(data)
        space = data.pop("search_space", None) or {}
        cfg = _build(cls, data, "", problems)
        dims = _build_space(space, problems)
        if cfg is not None:
            cfg = dataclasses.replace(cfg, search_space=dims)
            problems.extend(_check_space_keys(cfg))
            problems.extend(_check_space_fits_search_alg(cfg))
            if not problems:
                problems.extend(_check_space_combinations(cfg))
        if problems:
            raise ConfigError(problems)
        return cfg

    def trial_config(self, overrides: dict | None = None) -> TrialConfig:
        """The trial's configuration: this sweep's trial fields with `overrides` set by dotted key."""
        base = {f.name: getattr(self, f.name) for f in fields(TrialConfig)}
        data = to_dict(TrialConfig(**base))
        for key, value in (overrides or {}).items():
            set_dotted(data, key, value)
        return TrialConfig.from_dict(data)


def _build_space(space: Any, problems: list[str]) -> dict[str, Dimension]:
    if not isinstance(space, dict):
        problems.append("search_space: expected a mapping of name -> {key, type, ...}")
        return {}
    dims = {}
    for name, spec in space.items():
        dim = _build(Dimension, spec, f"search_space.{name}.", problems)
        if dim is not None:
            dims[name] = dim
    return dims


def _check_space_fits_search_alg(cfg: SweepConfig) -> list[str]:
    """A sweep needs a non-empty space; grid search enumerates, so it takes only choice/grid entries."""
    if not cfg.search_space:
        return ["search_space: empty; accepted: at least one entry such as r: {key: peft.r, type: choice, values: [8]}"]
    if cfg.search_alg.name != "grid":
        return []
    return [f"search_space.{name}.type: {dim.type} cannot be enumerated; accepted with search_alg=grid: choice, grid"
            for name, dim in cfg.search_space.items() if dim.type not in ("choice", "grid")]


def _runtime_limits(trial: TrialConfig, on_gpu: bool) -> list[str]:
    """Combinations that validate but fail when run with PEFT 0.21 + bitsandbytes 0.50."""
    if trial.peft.use_dora and trial.quant.bits == 8 and not on_gpu:
        return ["peft.use_dora: DoRA on an 8-bit base fails on CPU (bitsandbytes int8 state); "
                "accepted: quant.bits 4 or 16 with DoRA, or GPU trials"]
    return []


def _check_space_combinations(cfg: SweepConfig, limit: int = 4096) -> list[str]:
    """Every combination of searched peft.*/quant.* choices must be a trial PEFT and bitsandbytes can run."""
    on_gpu = bool(cfg.resources.gpus_per_trial)
    dims = [d for d in cfg.search_space.values()
            if d.key.startswith(("peft.", "quant.")) and d.type in ("choice", "grid")]
    if not dims:
        return _runtime_limits(cfg, on_gpu)
    if math.prod(len(d.values) for d in dims) > limit:
        return []
    def trial_problems(overrides: dict[str, Any]) -> list[str]:
        try:
            return _runtime_limits(cfg.trial_config(overrides), on_gpu)
        except ConfigError as exc:
            return exc.problems

    problems: list[str] = []
    for combo in itertools.product(*(d.values for d in dims)):
        overrides = {d.key: v for d, v in zip(dims, combo)}
        found = trial_problems(overrides)
        if not found:
            continue
        for key in list(overrides):  # keep only the values that make it fail
            rest = {k: v for k, v in overrides.items() if k != key}
            if trial_problems(rest):
                overrides = rest
        shown = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())
        line = (f"search_space: {shown} cannot run together ({found[0]}); accepted: a space whose every "
                "combination is valid (split it into separate sweeps)")
        if line not in problems:
            problems.append(line)
    return problems


def _check_space_keys(cfg: SweepConfig) -> list[str]:
    """Every dimension must set a key that exists in the trial config, once."""
    problems, seen = [], {}
    trial_keys = set(flatten(to_dict(TrialConfig())))
    for name, dim in cfg.search_space.items():
        if dim.key and dim.key not in trial_keys:
            problems.append(f"search_space.{name}.key: {dim.key!r} is not a trial config key; accepted: "
                            "model.*, peft.*, quant.*, data.*, train.*")
        if dim.key in seen:
            problems.append(f"search_space.{name}.key: {dim.key!r} is already searched by {seen[dim.key]}")
        seen[dim.key] = name
    return problems


def to_dict(obj: Any) -> Any:
    """Dataclasses -> plain dicts/lists (tuples become lists), for YAML, JSON and Ray."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data['a']['b'] = value for key 'a.b'."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = copy.deepcopy(value)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
