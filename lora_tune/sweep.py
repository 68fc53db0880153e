"""Run a LoRA/QLoRA hyperparameter sweep with Ray Tune; configuration by Hydra (conf/).

    python -m lora_tune.sweep                          # quickstart: local Ray, SmolLM2-135M, W&B offline
    python -m lora_tune.sweep experiment=tiny          # seconds, on a tiny random model
    python -m lora_tune.sweep scheduler=fifo num_samples=16 search_space=qlora_vs_lora
    python -m lora_tune.sweep --cfg job                # print the composed config

`main` is a thin Hydra shell: it validates the composed config (every problem at once, exit 2) and calls
`run_sweep`, which needs no Hydra and is what tests call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_tune import __version__
from lora_tune.config import ConfigError, SweepConfig, to_dict
from lora_tune.report import write_atomic, write_results

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SECRET_MARKERS = ("key", "token", "password", "secret")
# Trial processes inherit these: quiet libraries, no tokenizer thread pools fighting the trial's threads.
WORKER_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning"}


def fail(problems: list[str]) -> NoReturn:
    """Print each problem on one line and exit 2 (no traceback)."""
    for problem in problems:
        print(f"lora_tune: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def to_sweep_config(dcfg: DictConfig | dict) -> SweepConfig:
    """Resolved Hydra config -> validated SweepConfig (raises ConfigError)."""
    data = OmegaConf.to_container(dcfg, resolve=True) if isinstance(dcfg, DictConfig) else dict(dcfg)
    data.pop("hydra", None)
    return with_absolute_paths(SweepConfig.from_dict(data))


def compose_config(overrides: list[str], on_error: Callable[[list[str]], Any] | None = None) -> SweepConfig:
    """Compose conf/ with overrides, as the command line would (for tests and `python -m lora_tune.train`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        dcfg = compose(config_name="config", overrides=overrides)
    try:
        return to_sweep_config(dcfg)
    except ConfigError as exc:
        if on_error is None:
            raise
        return on_error(exc.problems)


def redact(data: Any) -> Any:
    """Drop every value whose key looks like a secret (key, token, password, secret)."""
    if isinstance(data, dict):
        return {k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) and v else redact(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def with_absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Local data and model paths made absolute: trials run in their own working directory."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path)),
        model=dataclasses.replace(cfg.model, name_or_path=absolute(cfg.model.name_or_path)),
    )


def sweep_dir_of(cfg: SweepConfig) -> Path:
    return Path(cfg.ray.storage_path or cfg.output_dir).expanduser().resolve() / cfg.sweep_name


def preflight(cfg: SweepConfig) -> list[str]:
    """Checks that need the filesystem or the model's module names (config on the meta device, no weights)."""
    from lora_tune.data import check_data
    from lora_tune.model import check_target_modules, linear_module_names

    problems = check_data(cfg.data)
    try:
        modules = linear_module_names(cfg.model.name_or_path, cfg.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loading problem is a config problem here
        return problems + [f"model.name_or_path: cannot read {cfg.model.name_or_path!r} ({exc})"]
    problems += check_target_modules(cfg.peft.target_modules, modules)
    for name, dim in cfg.search_space.items():
        if dim.key == "peft.target_modules":
            for value in dim.values or []:
                problems += check_target_modules(value, modules, f"search_space.{name}.values")
    if not cfg.resume and sweep_dir_of(cfg).exists():
        problems.append(f"sweep_name: {sweep_dir_of(cfg)} exists; accepted: a new sweep_name, or "
                        f"resume={sweep_dir_of(cfg)} to continue it")
    return problems


def shared_task_data(cfg: SweepConfig) -> Any:
    """Tokenize once per sweep (shared through the object store) unless trials search data.* keys."""
    from lora_tune.data import prepare_task_data
    from lora_tune.model import load_tokenizer

    if any(dim.key.startswith(("data.", "model.")) for dim in cfg.search_space.values()):
        return None
    return prepare_task_data(load_tokenizer(cfg.model.name_or_path), cfg.data)


def init_ray(cfg: SweepConfig) -> None:
    import ray

    os.environ.update(WORKER_ENV)
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=True)
    else:
        # A local instance stays on the loopback interface.
        ray.init(num_cpus=cfg.resources.num_cpus, include_dashboard=False, log_to_driver=True,
                 _node_ip_address="127.0.0.1")


def shutdown_ray() -> None:
    """Stop local Ray (flushing trial logs, so the summary is the last line); leave a cluster running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def build_scheduler(cfg: SweepConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from lora_tune.space import to_domain

    sched = cfg.scheduler
    if sched.name == "asha":
        return ASHAScheduler(time_attr="step", max_t=cfg.max_steps, grace_period=sched.grace_period,
                             reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    if sched.name == "pbt":
        by_key = {dim.key: dim for dim in cfg.search_space.values()}
        mutations = {key: to_domain(by_key[key]) for key in sched.mutate if key in by_key}
        return PopulationBasedTraining(time_attr="step", perturbation_interval=sched.perturbation_interval,
                                       hyperparam_mutations=mutations, seed=cfg.seed)
    return FIFOScheduler()


def build_search_alg(cfg: SweepConfig) -> Any:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if cfg.search_alg.name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=cfg.seed)
        limit = cfg.search_alg.max_concurrent
        return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher
    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.search_alg.max_concurrent or 0)


def build_tuner(cfg: SweepConfig, sweep_dir: Path, callbacks: list) -> Any:
    from ray import tune

    from lora_tune.space import param_space
    from lora_tune.trainable import make_trainable

    data = shared_task_data(cfg)
    trainable = tune.with_parameters(make_trainable(cfg), data=data)
    trainable = tune.with_resources(trainable, {"cpu": cfg.resources.cpus_per_trial,
                                                "gpu": cfg.resources.gpus_per_trial})
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg.search_space, grid=cfg.search_alg.name == "grid"),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
            scheduler=build_scheduler(cfg), search_alg=build_search_alg(cfg),
            max_concurrent_trials=cfg.search_alg.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=cfg.sweep_name, storage_path=str(sweep_dir.parent), callbacks=callbacks, verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )


def trial_row(result: Any, cfg: SweepConfig) -> dict[str, Any]:
    """One results row: status, early stop, best metric and the searched hyperparameters."""
    from lora_tune.space import column_names, encode_value

    history = result.metrics_dataframe
    metrics = result.metrics or {}
    row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or Path(result.path).name,
                           "status": "ERROR" if result.error else "TERMINATED"}
    steps = int(metrics.get("step", 0) or 0)
    row["stopped_early"] = bool(not result.error and steps < cfg.max_steps)
    row["steps"] = steps
    best = None
    if history is not None and cfg.metric in history and history[cfg.metric].notna().any():
        column = history[cfg.metric]
        best = history.loc[column.idxmin() if cfg.mode == "min" else column.idxmax()]
    for name in ("eval_loss", "eval_exact_match"):
        value = best.get(name) if best is not None else None
        row[name] = float(value) if value is not None and not math.isnan(value) else None
    for key, column in column_names(cfg.search_space).items():
        row[column] = encode_value(result.config.get(key))
    row["train_loss"] = metrics.get("train_loss")
    row["tokens_per_s"] = metrics.get("tokens_per_s")
    row["peak_mem_mb"] = metrics.get("peak_mem_mb")
    row["trainable_params"] = metrics.get("trainable_params")
    row["node_id"] = metrics.get("node_id")
    row["resumed_from_step"] = metrics.get("resumed_from_step", 0)
    row["error"] = str(result.error).strip().splitlines()[-1][:300] if result.error else None
    return row


def pick_winner(rows: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(cfg.metric), float) and math.isfinite(r[cfg.metric])]
    if not scored:
        return None
    return (min if cfg.mode == "min" else max)(scored, key=lambda r: r[cfg.metric])


def export_adapter(result: Any, cfg: SweepConfig, best_dir: Path) -> Path:
    """Copy the winner's best checkpoint adapter to best/adapter atomically (temp dir + rename)."""
    checkpoint = result.get_best_checkpoint(cfg.metric, cfg.mode) or result.checkpoint
    best_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=best_dir))
    try:
        with checkpoint.as_directory() as local:
            shutil.copytree(Path(local) / "adapter", tmp / "adapter")
        target = best_dir / "adapter"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "adapter", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best_dir / "adapter"


def evaluate_on_test(cfg: SweepConfig, trial_cfg: Any, adapter: Path) -> dict[str, Any]:
    """Base vs winner exact match on the test split, as a Ray task with a trial's resources."""
    import ray

    from lora_tune.evaluate import compare_on_test

    task = ray.remote(compare_on_test).options(num_cpus=cfg.resources.cpus_per_trial,
                                               num_gpus=cfg.resources.gpus_per_trial)
    threads = max(1, int(cfg.resources.num_cpus or os.cpu_count() or 1))
    return ray.get(task.remote(trial_cfg, str(adapter), threads))


def finish(cfg: SweepConfig, grid: Any, sweep_dir: Path, tracker: Any) -> dict[str, Any] | None:
    """Results table, winner adapter, test-split comparison and summary.json."""
    from lora_tune.space import overrides_from_params

    results = {trial_row(r, cfg)["trial_id"]: r for r in grid}
    rows = [trial_row(r, cfg) for r in grid]
    write_results(sweep_dir, rows)
    winner = pick_winner(rows, cfg)
    if winner is None:
        print("lora_tune: no trial produced a finite metric; see results.csv", file=sys.stderr)
        return None
    result = results[winner["trial_id"]]
    trial_cfg = cfg.trial_config(overrides_from_params(result.config, cfg.search_space))
    adapter = export_adapter(result, cfg, sweep_dir / "best")
    test = evaluate_on_test(cfg, trial_cfg, adapter)
    summary = {
        "trial_id": winner["trial_id"], "metric": cfg.metric, "mode": cfg.mode, "value": winner[cfg.metric],
        "eval_exact_match": winner.get("eval_exact_match"), "test": test,
        "base_model": cfg.model.name_or_path, "bits": trial_cfg.quant.bits,
        "hyperparameters": {k: v for k, v in winner.items() if k in {n for n in cfg.search_space}},
        "config": redact(trial_cfg.to_dict()), "adapter": str(adapter), "sweep_dir": str(sweep_dir),
        "lora_tune_version": __version__, "wandb": tracker.refs(),
    }
    write_atomic(sweep_dir / "best" / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def run_sweep(cfg: SweepConfig) -> dict[str, Any] | None:
    """Validate, run the sweep on Ray Tune, write results; returns the winner's summary."""
    from lora_tune.registry import TrialTracker
    from lora_tune.trainable import TrackerCallback

    problems = preflight(cfg)
    if problems:
        raise ConfigError(problems)
    sweep_dir = sweep_dir_of(cfg)
    init_ray(cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_dir / "config.yaml", OmegaConf.to_yaml(redact(to_dict(cfg))))
    tracker = TrialTracker(cfg.wandb, cfg.sweep_name, sweep_dir, cfg.model.name_or_path)
    try:
        grid = build_tuner(cfg, sweep_dir, [TrackerCallback(tracker, cfg)]).fit()
        summary = finish(cfg, grid, sweep_dir, tracker)
    finally:
        tracker.close()
        shutdown_ray()
    print(summary_line(summary, sweep_dir))
    return summary


def summary_line(summary: dict[str, Any] | None, sweep_dir: Path) -> str:
    if summary is None:
        return f"lora_tune: no winner; results in {sweep_dir}/results.csv"
    test = summary["test"]
    return (f"lora_tune: winner {summary['trial_id']} {summary['metric']}={summary['value']:.4f} "
            f"test exact match {test['winner_exact_match']:.3f} (base {test['base_exact_match']:.3f}) "
            f"adapter {summary['adapter']}")


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(dcfg: DictConfig) -> None:
    try:
        cfg = to_sweep_config(dcfg)
        run_sweep(cfg)
    except ConfigError as exc:
        fail(exc.problems)


if __name__ == "__main__":
    main()
