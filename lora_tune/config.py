"""Typed configuration and validation, pure Python (no torch, Ray or Hydra import).

These dataclasses are the single source of every default: `compose.py` registers them with Hydra as the
schemas of conf/ (the YAML files carry the same values, with a comment per key; a test fails when they
disagree). `SweepConfig.from_dict` turns a composed dict into them and collects *every* problem it finds into
one `ConfigError`, each problem a single line naming the key and what is accepted. A trial's configuration is
the sweep's with the sampled values set by their dotted keys (`trial_config`), validated the same way.

`scheduler` and `search_alg` are polymorphic: their `name` picks the dataclass (`SCHEDULERS`, `SEARCH_ALGS`),
so the ASHA options hold no PBT keys and so on.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from lora_tune.errors import ConfigError

BITS = (4, 8, 16)
PEFT_METHODS = ("lora", "adalora")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANT_TYPES = ("nf4", "fp4")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("auto", "adamw", "adamw_8bit", "paged_adamw")
MODES = ("min", "max")
WANDB_MODES = ("online", "offline", "disabled", "auto")
DATA_FORMATS = ("auto", "prompt_answer", "messages", "alpaca", "text")
STRATEGIES = ("ddp", "fsdp")
PLACEMENTS = ("strict_pack", "pack", "spread")
GENERATE_WHEN = ("auto", "every", "final", "never")
# Symbolic target-module sets, resolved against the model's module names (targets.py).
TARGET_SETS = ("qv", "attention", "mlp", "all-linear")
# Built-in generation metrics (metrics.py); `module:function` names a user scorer.
METRICS = ("exact_match", "normalized_exact_match", "contains", "token_f1", "rouge_l", "regex")
DIMENSION_TYPES = (
    "choice", "grid", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint",
)
# Keys a PBT mutation may not change: they change the adapter's shape or the base a checkpoint belongs to.
SHAPE_KEYS = ("peft.r", "peft.target_modules", "peft.method", "peft.use_dora", "peft.adalora_init_r", "quant.bits",
              "quant.quant_type", "quant.double_quant", "model.name_or_path")


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _optional_positive_int(value: Any) -> bool:
    return value is None or _positive_int(value)


def _is_size(value: Any) -> bool:
    """A carve size: a fraction in (0, 1) or a row count >= 1."""
    return (_is_int(value) and value >= 1) or (_is_number(value) and 0 < value < 1)


def _one_of(p: _Problems, key: str, value: Any, accepted: tuple) -> None:
    p.check(value in accepted and not isinstance(value, bool), key,
            f"got {value!r}; accepted: {', '.join(str(a) for a in accepted)}")


def metric_name(spec: str) -> str:
    """exact_match -> eval_exact_match; mypkg.scorers:bleu -> eval_bleu (what trials report)."""
    return f"eval_{spec.rsplit(':', 1)[-1]}"


@dataclass
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


@dataclass
class PeftConfig:
    method: str = "lora"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: Any = "qv"  # a symbolic set (TARGET_SETS) or a list of module names
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    # AdaLoRA only: rank budget shrinks from init_r towards r between these fractions of max_steps.
    adalora_init_r: int = 12
    adalora_tinit_frac: float = 0.1
    adalora_tfinal_frac: float = 0.2

    def validate(self, p: _Problems) -> None:
        _one_of(p, "method", self.method, PEFT_METHODS)
        p.check(_positive_int(self.r), "r", f"got {self.r!r}; accepted: an integer > 0")
        p.check(_is_number(self.alpha) and self.alpha > 0, "alpha", f"got {self.alpha!r}; accepted: a number > 0")
        p.check(_is_number(self.dropout) and 0 <= self.dropout < 1, "dropout",
                f"got {self.dropout!r}; accepted: a number in [0, 1)")
        _one_of(p, "bias", self.bias, ("none", "all", "lora_only"))
        tm = self.target_modules
        ok = tm in TARGET_SETS or (
            isinstance(tm, (list, tuple)) and len(tm) > 0 and all(isinstance(m, str) and m for m in tm)
        )
        p.check(ok, "target_modules",
                f"got {tm!r}; accepted: {', '.join(TARGET_SETS)} or a non-empty list of module names")
        if self.method == "adalora":
            p.check(not self.use_dora, "use_dora",
                    "PEFT cannot combine DoRA with AdaLoRA; accepted: false with adalora")
            p.check(not self.use_rslora, "use_rslora",
                    "PEFT's AdaLoRA ignores rsLoRA scaling (alpha / r always); accepted: false with adalora")
            p.check(_positive_int(self.adalora_init_r) and self.adalora_init_r >= (self.r or 0),
                    "adalora_init_r", "accepted: an integer >= peft.r")


@dataclass
class QuantConfig:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: the dtype train.precision computes in

    def validate(self, p: _Problems) -> None:
        _one_of(p, "bits", self.bits, BITS)
        _one_of(p, "quant_type", self.quant_type, QUANT_TYPES)
        _one_of(p, "compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclass
class DataConfig:
    path: str = "embedded:dates"  # a file, a folder of split files, embedded:<task>, or a hub dataset id
    name: str | None = None  # hub dataset subset / config name
    revision: str | None = None  # hub dataset revision (commit, tag or branch)
    format: str = "auto"  # auto | prompt_answer | messages | alpaca | text
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    messages_field: str = "messages"
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    text_field: str = "text"
    system_prompt: str | None = "Answer with the date only."  # None: the chat template's default
    chat_template: str | None = None  # None: the tokenizer's, or the plain template when it has none
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    eval_size: float = 0.1  # carved from train when eval_split is missing: a fraction or a row count
    test_size: float = 0.1  # carved from train when test_split is missing: a fraction or a row count
    max_seq_len: int = 80
    packing: bool = False
    group_by_length: bool = True  # batches of similar lengths (less padding); false: a plain random order
    max_train_examples: int | None = None
    eval_examples: int = 32  # validation examples used for eval loss at each evaluation
    exact_match_examples: int = 16  # validation examples generated for the generation metrics
    test_examples: int | None = 200  # test examples for the final scoring (None: all)
    max_new_tokens: int = 12

    def validate(self, p: _Problems) -> None:
        p.check(isinstance(self.path, str) and bool(self.path), "path",
                "accepted: a .jsonl/.json/.parquet file, a folder of split files, embedded:<task> or a hub id")
        _one_of(p, "format", self.format, DATA_FORMATS)
        for key in ("prompt_field", "answer_field", "messages_field", "instruction_field", "input_field",
                    "output_field", "text_field", "train_split", "eval_split", "test_split"):
            p.check(isinstance(getattr(self, key), str) and bool(getattr(self, key)), key,
                    "accepted: a non-empty string")
        p.check(_positive_int(self.max_seq_len) and self.max_seq_len >= 16, "max_seq_len", "accepted: an integer >= 16")
        for key in ("eval_size", "test_size"):
            p.check(_is_size(getattr(self, key)), key,
                    f"got {getattr(self, key)!r}; accepted: a fraction in (0, 1) or a row count >= 1")
        for key in ("eval_examples", "exact_match_examples", "max_new_tokens"):
            value = getattr(self, key)
            p.check(_is_int(value) and value >= 0, key, f"got {value!r}; accepted: an integer >= 0")
        for key in ("max_train_examples", "test_examples"):
            value = getattr(self, key)
            p.check(_optional_positive_int(value), key, f"got {value!r}; accepted: null or an integer > 0")


@dataclass
class TrainConfig:
    lr: float = 2e-4
    batch_size: int = 4  # examples per micro-batch over all the trial's workers; a step sees batch_size x grad_accum
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    optimizer: str = "auto"  # auto = adamw (torch); adamw_8bit, paged_adamw (bitsandbytes)
    loraplus_lr_ratio: float | None = None  # LoRA+: lora_B learns at lr x this (PEFT); None: one lr for all
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto: bf16 on native-bf16 GPUs/CPUs, fp16 + loss scaling on older GPUs, else fp32
    eval_every: int = 10
    eval_batch_size: int = 16
    checkpoint_every: int | None = None  # resumable state every N steps; None: every second evaluation
    num_threads: int | None = None  # torch threads; None: the trial's CPU share

    def validate(self, p: _Problems) -> None:
        p.check(_is_number(self.lr) and self.lr > 0, "lr", f"got {self.lr!r}; accepted: a number > 0")
        for key in ("batch_size", "grad_accum", "eval_every", "eval_batch_size"):
            value = getattr(self, key)
            p.check(_positive_int(value), key, f"got {value!r}; accepted: an integer > 0")
        p.check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "accepted: a number >= 0")
        p.check(_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio",
                "accepted: a number in [0, 1)")
        _one_of(p, "lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _one_of(p, "optimizer", self.optimizer, OPTIMIZERS)
        ratio = self.loraplus_lr_ratio
        p.check(ratio is None or (_is_number(ratio) and ratio >= 1), "loraplus_lr_ratio",
                f"got {ratio!r}; accepted: null or a number >= 1 (lora_B's learning rate over lora_A's)")
        _one_of(p, "precision", self.precision, PRECISIONS)
        p.check(_is_number(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm", "accepted: a number >= 0")
        p.check(_optional_positive_int(self.checkpoint_every), "checkpoint_every", "accepted: null or an integer > 0")
        p.check(_optional_positive_int(self.num_threads), "num_threads", "accepted: null or an integer > 0")


@dataclass
class EvalConfig:
    """What trials score at their evaluations, and what the sweep scores on the test split."""

    metrics: list[str] | None = None  # None: [exact_match] for prompt/answer, messages and alpaca data; [] for text
    answer_regex: str | None = None  # the `regex` metric: extract group 1 (or the match) from both sides
    generate: str = "auto"  # when to generate for the metrics: auto, every, final, never
    baseline: bool = True  # also train the default LoRA (r=8, alpha=16, qv, 16-bit, same max_steps)
    confirm_top_k: int = 2  # retrain the top-k finished configs with other seeds, pick by the mean; 0: off
    confirm_seeds: int = 2  # the other seeds each confirmed config is trained with

    def validate(self, p: _Problems) -> None:
        metrics = self.metrics
        if metrics is not None:
            ok = isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics)
            p.check(ok, "metrics", f"got {metrics!r}; accepted: a list of {', '.join(METRICS)} or module:function")
            for name in metrics if ok else []:
                user = bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name))
                p.check(name in METRICS or user, "metrics",
                        f"got {name!r}; accepted: {', '.join(METRICS)} or module:function (a scorer of yours)")
            p.check(not ok or len({metric_name(m) for m in metrics}) == len(metrics), "metrics",
                    "two metrics report the same eval_<name>; accepted: distinct names")
            p.check(not ok or "regex" not in metrics or bool(self.answer_regex), "answer_regex",
                    "the regex metric needs it; accepted: a regular expression such as '#### (\\S+)'")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except (re.error, TypeError) as exc:
                p.add("answer_regex", f"got {self.answer_regex!r} ({exc}); accepted: a Python regular expression")
        _one_of(p, "generate", self.generate, GENERATE_WHEN)
        p.check(isinstance(self.baseline, bool), "baseline", f"got {self.baseline!r}; accepted: true, false")
        for key in ("confirm_top_k", "confirm_seeds"):
            value = getattr(self, key)
            p.check(_is_int(value) and value >= 0, key, f"got {value!r}; accepted: an integer >= 0")


@dataclass
class TrialConfig:
    """Everything one fine-tuning trial needs; `train.run_trial` takes this."""

    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    max_steps: int = 30
    seed: int = 0

    def validate(self, p: _Problems) -> None:
        p.check(_positive_int(self.max_steps), "max_steps", f"got {self.max_steps!r}; accepted: an integer > 0")
        if self.peft.method == "adalora":  # PEFT's AdaLoRA needs one rank-budget step before its final phase
            p.check(not _positive_int(self.max_steps) or self.max_steps >= 2, "max_steps",
                    f"got {self.max_steps!r}; accepted: an integer >= 2 with peft.method=adalora")
        p.check(_is_int(self.seed), "seed", "accepted: an integer")

    def metric_names(self) -> list[str]:
        """What the trial reports at an evaluation: eval_loss, train_loss and eval_<metric> per metric."""
        return ["eval_loss", "train_loss", *(metric_name(m) for m in self.generation_metrics())]

    def generation_metrics(self) -> list[str]:
        """eval.metrics, or its data-dependent default (exact match unless the data is plain text)."""
        if self.eval.metrics is not None:
            return list(self.eval.metrics)
        return [] if self.data.format == "text" else ["exact_match"]

    @classmethod
    def from_dict(cls, data: dict) -> TrialConfig:
        problems: list[str] = []
        cfg = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def to_dict(self) -> dict:
        return to_dict(self)


@dataclass
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
        _one_of(p, "type", self.type, DIMENSION_TYPES)
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


@dataclass
class AshaConfig:
    """Asynchronous Successive Halving: stop weak trials early at rungs of `step`."""

    name: str = "asha"
    grace_period: int | None = None  # steps before a trial may be stopped; None: train.eval_every
    reduction_factor: float = 3  # keep the top 1/reduction_factor at each rung
    brackets: int = 1

    def validate(self, p: _Problems) -> None:
        p.check(_optional_positive_int(self.grace_period), "grace_period", "accepted: null or an integer > 0")
        p.check(_is_number(self.reduction_factor) and self.reduction_factor > 1, "reduction_factor",
                "accepted: a number > 1")
        p.check(_positive_int(self.brackets), "brackets", "accepted: an integer > 0")


@dataclass
class FifoConfig:
    """First in, first out: every trial runs to max_steps."""

    name: str = "fifo"

    def validate(self, p: _Problems) -> None:
        return None


@dataclass
class PbtConfig:
    """Population Based Training: copy the best trials' checkpoints and perturb their hyperparameters."""

    name: str = "pbt"
    perturbation_interval: int = 20  # steps between exploit/explore rounds
    mutate: list[str] = field(default_factory=lambda: ["train.lr"])  # searched keys resampled when perturbing
    quantile_fraction: float = 0.25  # the bottom fraction copies the top fraction
    resample_probability: float = 0.25  # chance a mutated key is resampled instead of scaled

    def validate(self, p: _Problems) -> None:
        p.check(_positive_int(self.perturbation_interval), "perturbation_interval", "accepted: an integer > 0")
        p.check(isinstance(self.mutate, (list, tuple)) and all(isinstance(k, str) for k in self.mutate), "mutate",
                "accepted: a list of searched config keys such as train.lr")
        shaped = [k for k in self.mutate or [] if k in SHAPE_KEYS]
        p.check(not shaped, "mutate", f"cannot mutate {', '.join(shaped)}: it changes the adapter's shape or the base, "
                "which a copied checkpoint cannot follow; accepted: keys such as train.lr, train.weight_decay, "
                "peft.dropout")
        p.check(_is_number(self.quantile_fraction) and 0 < self.quantile_fraction <= 0.5, "quantile_fraction",
                "accepted: a number in (0, 0.5]")
        p.check(_is_number(self.resample_probability) and 0 <= self.resample_probability <= 1,
                "resample_probability", "accepted: a number in [0, 1]")


@dataclass
class RandomSearchConfig:
    """Random sampling from the search space (Ray Tune's BasicVariantGenerator)."""

    name: str = "random"
    max_concurrent: int | None = None  # cap on trials running at once; None: as many as resources allow

    def validate(self, p: _Problems) -> None:
        p.check(_optional_positive_int(self.max_concurrent), "max_concurrent", "accepted: null or an integer > 0")


@dataclass
class GridSearchConfig(RandomSearchConfig):
    """Every combination of the choice entries, num_samples times each."""

    name: str = "grid"


@dataclass
class OptunaSearchConfig(RandomSearchConfig):
    """Optuna's TPE sampler, proposing from what earlier trials reported."""

    name: str = "optuna"
    max_concurrent: int | None = 2  # TPE learns from finished trials: keep few in flight


SCHEDULERS: dict[str, type] = {"asha": AshaConfig, "fifo": FifoConfig, "pbt": PbtConfig}
SEARCH_ALGS: dict[str, type] = {"random": RandomSearchConfig, "grid": GridSearchConfig,
                                "optuna": OptunaSearchConfig}


@dataclass
class ResourcesConfig:
    cpus_per_trial: float = 1  # per worker when workers_per_trial > 1
    gpus_per_trial: float = 0  # per worker when workers_per_trial > 1
    num_cpus: int | None = None  # local Ray only: CPUs Ray may use; None: all of this machine's
    gpu_memory_gb: float | None = None  # memory of one GPU, for the dry run's fit check; None: this machine's GPU
    workers_per_trial: int = 1  # >1: each trial is a Ray Train TorchTrainer with this many workers
    strategy: str = "ddp"  # ddp: replicate the base on every worker; fsdp: shard it
    placement: str = "strict_pack"  # a trial's workers: strict_pack (one node), pack, or spread

    def validate(self, p: _Problems) -> None:
        p.check(_is_number(self.cpus_per_trial) and self.cpus_per_trial > 0, "cpus_per_trial",
                "accepted: a number > 0")
        ok = _is_number(self.gpus_per_trial) and self.gpus_per_trial >= 0
        ok = ok and (self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer())
        p.check(ok, "gpus_per_trial", "accepted: 0, a fraction of one GPU, or a whole number of GPUs")
        p.check(_optional_positive_int(self.num_cpus), "num_cpus", "accepted: null or an integer > 0")
        p.check(self.gpu_memory_gb is None or (_is_number(self.gpu_memory_gb) and self.gpu_memory_gb > 0),
                "gpu_memory_gb", f"got {self.gpu_memory_gb!r}; accepted: null or a number of GB > 0")
        p.check(_positive_int(self.workers_per_trial), "workers_per_trial",
                f"got {self.workers_per_trial!r}; accepted: an integer >= 1")
        _one_of(p, "strategy", self.strategy, STRATEGIES)
        _one_of(p, "placement", self.placement, PLACEMENTS)
        if self.workers_per_trial == 1 and _is_number(self.gpus_per_trial):  # a trial loads on one device
            p.check(self.gpus_per_trial <= 1, "gpus_per_trial", f"got {self.gpus_per_trial:g}: a one-worker trial "
                    "trains on one GPU; accepted: 0, a fraction of one GPU or 1 (for N GPUs a trial: "
                    "resources.workers_per_trial=N with gpus_per_trial=1)")
        if _positive_int(self.workers_per_trial) and self.workers_per_trial > 1:
            p.check(not (0 < (self.gpus_per_trial or 0) < 1), "gpus_per_trial",
                    "a Ray Train worker takes whole GPUs; accepted: 0 or an integer with workers_per_trial > 1")


def _ray_address(address: Any) -> bool:
    """auto, HOST:PORT, ray://HOST:PORT (Ray Client) or http(s)://HOST:PORT (a dashboard: Jobs API)."""
    if not isinstance(address, str):
        return False
    return address == "auto" or bool(re.fullmatch(r"((ray|https?)://)?[A-Za-z0-9_.\-\[\]:]+(:\d+)?/?", address))


def is_uri(path: str | None) -> bool:
    """s3://..., gs://..., any scheme://: object storage that every node reaches (not a local path)."""
    return bool(path) and bool(re.match(r"^[a-z][a-z0-9+.-]*://", str(path))) and not str(path).startswith("file://")


@dataclass
class RayConfig:
    address: str | None = None  # None: local Ray; auto/HOST:PORT: join a cluster; http://HOST:8265: submit a job
    storage_path: str | None = None  # where the sweep lives: a local path or s3://, gs://...; None: output_dir
    shared_fs: bool = False  # a local storage path is a mount shared by every node (NFS/EFS/Lustre)
    max_failures: int = 2  # retries per trial
    num_to_keep: int = 2  # checkpoints kept per trial (the best by metric and the latest)
    pending_timeout_s: float = 600  # after the trials: how long a task may wait for resources to start
    pip: list[str] = field(default_factory=list)  # http address only: pip requirements installed for the job

    def validate(self, p: _Problems) -> None:
        p.check(_positive_int(self.num_to_keep), "num_to_keep", f"got {self.num_to_keep!r}; accepted: an integer > 0")
        p.check(self.address is None or _ray_address(self.address), "address",
                f"got {self.address!r}; accepted: null, auto, HOST:PORT, ray://HOST:PORT or http://HOST:8265")
        p.check(self.storage_path is None or (isinstance(self.storage_path, str) and bool(self.storage_path)),
                "storage_path", "accepted: null, a local path, or a URI such as s3://bucket/prefix")
        p.check(isinstance(self.pip, (list, tuple)) and all(isinstance(r, str) and r for r in self.pip), "pip",
                f"got {self.pip!r}; accepted: a list of pip requirement strings")
        p.check(_is_number(self.pending_timeout_s) and self.pending_timeout_s > 0, "pending_timeout_s",
                f"got {self.pending_timeout_s!r}; accepted: a number of seconds > 0")
        p.check(_is_int(self.max_failures) and self.max_failures >= -1, "max_failures",
                "accepted: an integer >= -1 (-1: retry forever)")


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto: online when an API key is set, offline otherwise
    project: str = "lora_tune"
    entity: str | None = None
    registry: str = "model"  # W&B Registry name: wandb-registry-<registry>
    collection: str = "lora-adapters"  # collection inside the registry

    def validate(self, p: _Problems) -> None:
        _one_of(p, "mode", self.mode, WANDB_MODES)
        p.check(isinstance(self.project, str) and bool(self.project), "project", "accepted: a non-empty string")


@dataclass
class SweepConfig(TrialConfig):
    """The whole sweep: the trial defaults plus how to search, schedule and record."""

    experiment: str = "quickstart"
    sweep_name: str = "sweep"
    output_dir: str = "runs"
    num_samples: int = 8
    metric: str = "eval_loss"
    mode: str = "min"
    search_space: dict[str, Any] = field(default_factory=dict)
    scheduler: Any = field(default_factory=AshaConfig)  # AshaConfig | FifoConfig | PbtConfig, by name
    search_alg: Any = field(default_factory=RandomSearchConfig)  # by name, see SEARCH_ALGS
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: str | None = None
    retry_errored: bool = False  # with resume: run errored trials again (from their last checkpoint)
    dry_run: bool = False
    detach: bool = False
    attach: str | None = None  # http ray.address only: a job id to stream again
    verbose: int = 1  # Ray Tune progress: 0 silent, 1 table every few seconds, 2 per result

    def validate(self, p: _Problems) -> None:
        super().validate(p)
        p.check(isinstance(self.sweep_name, str) and bool(re.fullmatch(r"[A-Za-z0-9_.=-]+", self.sweep_name)),
                "sweep_name", f"got {self.sweep_name!r}; accepted: letters, digits and _ . = -")
        p.check(_positive_int(self.num_samples), "num_samples", f"got {self.num_samples!r}; accepted: an integer >= 1")
        _one_of(p, "mode", self.mode, MODES)
        names = self.metric_names()
        p.check(self.metric in names, "metric",
                f"got {self.metric!r}; accepted (what trials report with these eval.metrics): {', '.join(names)}")
        generated = self.metric in names[2:]
        p.check(not generated or self.data.exact_match_examples > 0, "data.exact_match_examples",
                f"metric={self.metric} is computed on these validation rows; accepted: an integer > 0")
        p.check(not generated or self.eval.generate != "never", "eval.generate",
                f"metric={self.metric} needs generation at evaluations; accepted: auto, every, final")
        submits = str(self.ray.address or "").startswith(("http://", "https://"))
        p.check(not self.detach or submits, "detach", "needs a job address; accepted: with ray.address=http://HOST:8265")
        p.check(self.attach is None or (submits and isinstance(self.attach, str) and bool(self.attach.strip())),
                "attach", "accepted: a job id, with ray.address=http://HOST:8265")
        self._check_cluster_storage(p)

    def _check_cluster_storage(self, p: _Problems) -> None:
        """On a cluster, the sweep must live where every node can reach it (trials checkpoint from any node)."""
        if not self.ray.address or self.dry_run or self.attach:
            return  # local Ray, a plan, or following a job that was checked when it was submitted
        where = self.resume or self.ray.storage_path or self.output_dir  # a resumed sweep stays where it is
        p.check(is_uri(where) or self.ray.shared_fs, "resume" if self.resume else "ray.storage_path",
                f"{where!r} is a local path, which other nodes of the cluster cannot reach; accepted: an object-store "
                "URI such as s3://bucket/prefix, or ray.shared_fs=true for a mount (NFS/EFS/Lustre) at the same path "
                "on every node")

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        problems: list[str] = []
        data = dict(data)
        space = data.pop("search_space", None) or {}
        polymorphic = {key: data.pop(key, None) for key in ("scheduler", "search_alg")}
        cfg = _build(cls, data, "", problems, validate=False)
        dims = _build_space(space, problems)
        if cfg is not None:
            cfg = dataclasses.replace(
                cfg, search_space=dims,
                scheduler=_build_named(SCHEDULERS, polymorphic["scheduler"], "scheduler", problems),
                search_alg=_build_named(SEARCH_ALGS, polymorphic["search_alg"], "search_alg", problems))
            found = _Problems()
            cfg.validate(found)
            problems.extend(found.items)
            problems.extend(_check_space_keys(cfg))
            problems.extend(_check_space_fits_search_alg(cfg))
            problems.extend(_check_mutations(cfg))
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


def _build(cls: type, data: Any, prefix: str, problems: list[str], validate: bool = True) -> Any:
    """Instantiate dataclass `cls` from a dict, reporting unknown keys and validation problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a mapping, got {type(data).__name__}")
        return None
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key; accepted: {', '.join(sorted(names))}")
    kwargs = {k: v for k, v in data.items() if k in names}
    for name, sub_cls in nested_sections(cls).items():
        kwargs[name] = _build(sub_cls, data.get(name), f"{prefix}{name}.", problems) or sub_cls()
    obj = cls(**kwargs)
    if validate:
        found = _Problems(prefix)
        obj.validate(found)
        problems.extend(found.items)
    return obj


def _build_named(options: dict[str, type], data: Any, section: str, problems: list[str]) -> Any:
    """A polymorphic section (scheduler, search_alg): its `name` picks the dataclass."""
    data = dict(data or {})
    name = data.get("name", next(iter(options)))
    if name not in options:
        problems.append(f"{section}.name: got {name!r}; accepted: {', '.join(options)}")
        return next(iter(options.values()))()
    return _build(options[name], data, f"{section}.", problems) or options[name]()


def nested_sections(cls: type) -> dict[str, type]:
    """The fields of `cls` that are typed config sections (their default is a dataclass of that type)."""
    return {f.name: f.default_factory for f in fields(cls)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
            and f.type not in ("Any", Any)}


def _build_space(space: Any, problems: list[str]) -> dict[str, Dimension]:
    """Search-space entries -> Dimensions; an entry set to null (`search_space.r=null`) is removed."""
    if not isinstance(space, dict):
        problems.append("search_space: expected a mapping of name -> {key, type, ...}")
        return {}
    dims = {}
    for name, spec in space.items():
        if spec is None:
            continue
        dim = _build(Dimension, spec, f"search_space.{name}.", problems)
        if dim is not None:
            dims[name] = dim
    return dims


def _check_space_fits_search_alg(cfg: SweepConfig) -> list[str]:
    """A sweep needs a non-empty space; grid search and Optuna take only some kinds of entries."""
    if not cfg.search_space:
        return ["search_space: empty; accepted: at least one entry such as r: {key: peft.r, type: choice, values: [8]}"]
    if cfg.search_alg.name == "grid":
        return [f"search_space.{name}.type: {dim.type} cannot be enumerated; accepted with search_alg=grid: "
                "choice, grid" for name, dim in cfg.search_space.items() if dim.type not in ("choice", "grid")]
    if cfg.search_alg.name == "optuna":
        return [f"search_space.{name}.type: grid cannot be sampled by Optuna; accepted with search_alg=optuna: "
                "choice and the numeric types" for name, dim in cfg.search_space.items() if dim.type == "grid"]
    return []


def _check_mutations(cfg: SweepConfig) -> list[str]:
    """PBT resamples searched keys: each key it mutates must be one the space searches."""
    if cfg.scheduler.name != "pbt":
        return []
    searched = {dim.key for dim in cfg.search_space.values()}
    missing = [key for key in cfg.scheduler.mutate if key not in searched]
    return [f"scheduler.mutate: {key} is not searched; accepted: keys of search_space entries "
            f"({', '.join(sorted(searched))})" for key in missing]


def _runtime_limits(trial: TrialConfig, res: ResourcesConfig) -> list[str]:
    """Combinations that validate but fail (or silently train wrong) when run with PEFT 0.21, bitsandbytes 0.50
    and torch 2.13's FSDP2, for one trial on these resources."""
    problems = []
    if trial.peft.use_dora and trial.quant.bits == 8 and not res.gpus_per_trial:
        problems.append("peft.use_dora: DoRA on an 8-bit base fails on CPU (bitsandbytes int8 state); "
                        "accepted: quant.bits 4 or 16 with DoRA, or GPU trials")
    if not _positive_int(res.workers_per_trial) or res.workers_per_trial == 1:
        return problems
    if res.strategy == "fsdp" and trial.quant.bits == 8:
        problems.append("resources.strategy: FSDP cannot shard bitsandbytes 8-bit weights; accepted: ddp with "
                        "quant.bits=8, or fsdp with quant.bits=16")
    if res.strategy == "fsdp" and trial.quant.bits == 4:
        # bitsandbytes#1945 (open): fully_shard rewrites the NaN bit patterns of NF4 bytes packed in bf16 (wrong
        # outputs, silently) and gathering the full weight (the adapter's save) crashes
        problems.append("resources.strategy: FSDP2 corrupts bitsandbytes 4-bit weights (bitsandbytes#1945: packed "
                        "NF4 bytes rewritten, a crash gathering them); accepted: ddp with quant.bits=4, or fsdp "
                        "with quant.bits=16")
    if res.strategy == "fsdp" and trial.peft.use_dora:
        problems.append("resources.strategy: DoRA's magnitude vectors are not sharded by lora_tune's FSDP wrap; "
                        "accepted: ddp with DoRA")
    if trial.peft.method == "adalora":
        problems.append("resources.workers_per_trial: AdaLoRA's rank allocation is per process; accepted: 1 with "
                        "peft.method=adalora")
    return problems


def _check_space_combinations(cfg: SweepConfig, limit: int = 4096) -> list[str]:
    """Every combination of searched peft.*/quant.* choices must be a trial PEFT and bitsandbytes can run."""
    dims = [d for d in cfg.search_space.values()
            if d.key.startswith(("peft.", "quant.")) and d.type in ("choice", "grid")]
    if not dims:
        return _runtime_limits(cfg, cfg.resources)
    if math.prod(len(d.values) for d in dims) > limit:
        return []

    def trial_problems(overrides: dict[str, Any]) -> list[str]:
        try:
            return _runtime_limits(cfg.trial_config(overrides), cfg.resources)
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
                "combination is valid (split it into separate sweeps)") if overrides else found[0]
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
                            "model.*, peft.*, quant.*, data.*, train.*, eval.*")
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


def get_dotted(data: dict, key: str, default: Any = None) -> Any:
    """data['a']['b'] for key 'a.b' (default when a part is missing)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
