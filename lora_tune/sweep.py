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
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_tune import __version__
from lora_tune.atomic import atomic_directory, write_atomic
from lora_tune.config import ConfigError, SweepConfig, to_dict
from lora_tune.redaction import redact
from lora_tune.report import write_results

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
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
    """Compose conf/ with overrides, as the command line would; every problem becomes one ConfigError line."""
    try:
        dcfg = compose_raw(overrides)
        return to_sweep_config(dcfg)
    except ConfigError as exc:
        if on_error is None:
            raise
        return on_error(exc.problems)


def compose_raw(overrides: list[str]) -> DictConfig:
    """Hydra composition only; Hydra's multi-line errors become one-line ConfigError problems."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError([hydra_problem(exc)]) from None


def hydra_problem(exc: Exception) -> str:
    """A one-line `key: problem; accepted: ...` for Hydra's composition errors."""
    text = str(exc)
    if match := re.search(r"Could not override '([^']+)'", text):
        return f"{match.group(1)}: unknown key; accepted: keys shown by --cfg job (use +key=value to add one)"
    if match := re.search(r"Could not find '([^/']+)/([^']+)'", text):
        group, option = match.groups()
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}: no option {option!r}; accepted: {', '.join(options)}"
    if match := re.search(r"Could not load '([^']+)'", text):
        return f"{match.group(1)}: cannot be loaded"
    return "overrides: " + " ".join(text.split())[:300]


def with_absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Local data and model paths made absolute: trials run in their own working directory."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path)),
        model=dataclasses.replace(cfg.model, name_or_path=absolute(cfg.model.name_or_path)),
    )


def resolve_resume(cfg: SweepConfig) -> SweepConfig:
    """resume=<sweep dir>: continue with the config that sweep was started with (its config.yaml)."""
    if not cfg.resume:
        return cfg
    sweep_dir = Path(cfg.resume).expanduser().resolve()
    if not (sweep_dir / "config.yaml").is_file() or not (sweep_dir / "tuner.pkl").is_file():
        raise ConfigError([f"resume: {cfg.resume} is not a sweep dir (no config.yaml and tuner.pkl); accepted: "
                           "<output_dir>/<sweep_name> of a sweep that started"])
    import yaml

    saved = SweepConfig.from_dict(yaml.safe_load((sweep_dir / "config.yaml").read_text()))
    return dataclasses.replace(saved, resume=str(sweep_dir), retry_errored=cfg.retry_errored, verbose=cfg.verbose,
                               output_dir=str(sweep_dir.parent), sweep_name=sweep_dir.name,
                               ray=dataclasses.replace(saved.ray, address=cfg.ray.address, storage_path=None))


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
    problems += output_dir_problems(sweep_dir_of(cfg).parent)
    problems += address_problems(cfg.ray.address)
    if not cfg.resume and sweep_dir_of(cfg).exists():
        problems.append(f"sweep_name: {sweep_dir_of(cfg)} exists; accepted: a new sweep_name, or "
                        f"resume={sweep_dir_of(cfg)} to continue it")
    return problems


def output_dir_problems(folder: Path) -> list[str]:
    """The sweep's parent folder must be creatable and writable (checked without creating anything)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return []
    return [f"output_dir: {folder} is not writable; accepted: a folder this user can create files in"]


def address_problems(address: str | None) -> list[str]:
    """A cluster address must answer on its port (the Jobs API's http://HOST:PORT or GCS HOST:PORT)."""
    import socket
    from urllib.parse import urlparse

    if not address or address == "auto":
        return []
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    default_port = 8265 if parsed.scheme in ("http", "https") else 10001 if parsed.scheme == "ray" else 6379
    try:
        port = parsed.port or default_port
        with socket.create_connection((parsed.hostname or "", port), timeout=3):
            return []
    except (OSError, ValueError) as exc:
        return [f"ray.address: cannot reach {address} ({exc.__class__.__name__}); accepted: null (local Ray), auto, "
                "HOST:PORT of a running cluster, or http://HOST:8265 of its dashboard"]


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
    if cfg.ray.address:  # cluster workers do not inherit this process's environment
        ray.init(address=cfg.ray.address, log_to_driver=True, runtime_env={"env_vars": WORKER_ENV})
    else:
        # A new local instance on the loopback interface: address="local" never joins another Ray that is
        # running on this machine (ray.init() alone would attach to it through /tmp/ray/ray_current_cluster).
        ray.init(address="local", num_cpus=cfg.resources.num_cpus, include_dashboard=False, log_to_driver=True,
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


def tune_trainable(cfg: SweepConfig) -> Any:
    """The trial function with its shared data and per-trial resources attached."""
    from ray import tune

    from lora_tune.trainable import make_trainable

    trainable = tune.with_parameters(make_trainable(cfg), data=shared_task_data(cfg))
    return tune.with_resources(trainable, {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial})


def build_tuner(cfg: SweepConfig, sweep_dir: Path, callbacks: list) -> Any:
    from ray import tune

    from lora_tune.space import param_space

    return tune.Tuner(
        tune_trainable(cfg),
        param_space=param_space(cfg.search_space, grid=cfg.search_alg.name == "grid"),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
            scheduler=build_scheduler(cfg), search_alg=build_search_alg(cfg),
            max_concurrent_trials=cfg.search_alg.max_concurrent,
            reuse_actors=True,  # a worker keeps its loaded base for the next trial (model.BaseModelCache)
        ),
        run_config=tune.RunConfig(
            name=cfg.sweep_name, storage_path=str(sweep_dir.parent), callbacks=callbacks, verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.ray.num_to_keep,
                                                    checkpoint_score_attribute=cfg.metric,
                                                    checkpoint_score_order=cfg.mode),
        ),
    )


def restore_tuner(cfg: SweepConfig, sweep_dir: Path, callbacks: list) -> Any:
    """Continue an interrupted sweep: finished trials stay finished, unfinished ones resume from checkpoints."""
    from ray import tune

    tuner = tune.Tuner.restore(str(sweep_dir), trainable=tune_trainable(cfg), resume_unfinished=True,
                               resume_errored=cfg.retry_errored)
    # The restored RunConfig carries the callbacks pickled at the start; this run's tracker replaces them.
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def trial_row(result: Any, cfg: SweepConfig) -> dict[str, Any]:
    """One results row: status, early stop, best metric and the searched hyperparameters."""
    from lora_tune.space import column_names, encode_value

    history = result.metrics_dataframe
    metrics = result.metrics or {}
    id_in_path = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(result.path).name)
    row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or (id_in_path.group(1) if id_in_path else
                                                                   Path(result.path).name),
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
    with atomic_directory(best_dir / "adapter") as tmp, checkpoint.as_directory() as local:
        shutil.copytree(Path(local) / "adapter", tmp, dirs_exist_ok=True)
    return best_dir / "adapter"


def run_after_trials(resources: Any, fn: Callable, *args: Any) -> Any:
    """`fn(*args, threads)` as a Ray task with one trial's resources (a GPU on a cluster). It runs once the trials
    are done, so it may use every CPU Ray was given."""
    import ray

    task = ray.remote(fn).options(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)
    threads = max(1, int(resources.num_cpus or os.cpu_count() or 1))
    return ray.get(task.remote(*args, threads))


def evaluate_on_test(cfg: SweepConfig, trial_cfg: Any, adapter: Path) -> dict[str, Any]:
    """Base vs winner exact match on the test split."""
    from lora_tune.evaluate import compare_on_test

    return run_after_trials(cfg.resources, compare_on_test, trial_cfg, str(adapter))


def evaluate_baseline(cfg: SweepConfig) -> dict[str, Any]:
    """eval.baseline: train + score the default LoRA (baseline.py)."""
    from lora_tune.baseline import default_lora_config, missing_modules, train_and_score

    missing = missing_modules(cfg)
    if missing:
        return {"default_lora_skipped": f"the model has no {', '.join(missing)}"}
    return run_after_trials(cfg.resources, train_and_score, default_lora_config(cfg))


def finish(cfg: SweepConfig, grid: Any, sweep_dir: Path, tracker: Any,
           failures: dict[str, int] | None = None) -> dict[str, Any] | None:
    """Results table, winner adapter, test-split comparison and summary.json."""
    from lora_tune.space import overrides_from_params

    rows, results = [], {}
    for result in grid:
        row = trial_row(result, cfg)
        row["failures"] = (failures or {}).get(row["trial_id"], 0)
        rows.append(row)
        results[row["trial_id"]] = result
    write_results(sweep_dir, rows)
    winner = pick_winner(rows, cfg)
    if winner is None:
        print("lora_tune: no trial produced a finite metric; see results.csv", file=sys.stderr)
        tracker.log_sweep(rows, None, redact(to_dict(cfg)))
        return None
    result = results[winner["trial_id"]]
    trial_cfg = cfg.trial_config(overrides_from_params(result.config, cfg.search_space))
    adapter = export_adapter(result, cfg, sweep_dir / "best")
    test = evaluate_on_test(cfg, trial_cfg, adapter)
    if cfg.eval.baseline:
        test.update(evaluate_baseline(cfg))
    summary = {
        "trial_id": winner["trial_id"], "metric": cfg.metric, "mode": cfg.mode, "value": winner[cfg.metric],
        "eval_exact_match": winner.get("eval_exact_match"), "test": test,
        "base_model": cfg.model.name_or_path, "bits": trial_cfg.quant.bits,
        "hyperparameters": {k: v for k, v in winner.items() if k in {n for n in cfg.search_space}},
        "config": redact(trial_cfg.to_dict()), "adapter": str(adapter), "sweep_dir": str(sweep_dir),
        "lora_tune_version": __version__, "wandb": tracker.refs(),
    }
    write_atomic(sweep_dir / "best" / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    tracker.log_sweep(rows, summary, redact(to_dict(cfg)))  # trials table + model artifact (+ Registry link)
    return summary


def run_sweep(cfg: SweepConfig) -> dict[str, Any] | None:
    """Validate, run the sweep on Ray Tune, write results; returns the winner's summary."""
    from lora_tune.registry import TrialTracker
    from lora_tune.trainable import FailureCounter, TrackerCallback

    if cfg.dry_run:  # print the plan (meta device, no weights); Ray never starts
        from lora_tune.plan import print_plan

        print_plan(cfg)
        return None
    problems = preflight(cfg)
    if problems:
        raise ConfigError(problems)
    sweep_dir = sweep_dir_of(cfg)
    init_ray(cfg)
    if not cfg.resume:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(sweep_dir / "config.yaml", OmegaConf.to_yaml(redact(to_dict(cfg))))
    tracker = TrialTracker(cfg.wandb, cfg.sweep_name, sweep_dir, cfg.model.name_or_path, cfg.metric, cfg.mode)
    failures = FailureCounter()
    callbacks = [TrackerCallback(tracker, cfg), failures]
    try:
        tuner = restore_tuner(cfg, sweep_dir, callbacks) if cfg.resume else build_tuner(cfg, sweep_dir, callbacks)
        grid = tuner.fit()
        summary = finish(cfg, grid, sweep_dir, tracker, failures.failures)
    finally:
        tracker.close()
        shutdown_ray()
    print(summary_line(summary, sweep_dir))
    return summary


def summary_line(summary: dict[str, Any] | None, sweep_dir: Path) -> str:
    if summary is None:
        return f"lora_tune: no winner; results in {sweep_dir}/results.csv"
    test = summary["test"]
    default = test.get("default_lora_exact_match")
    baseline = f", default LoRA {default:.3f}" if default is not None else ""
    return (f"lora_tune: winner {summary['trial_id']} {summary['metric']}={summary['value']:.4f} "
            f"test exact match {test['winner_exact_match']:.3f} (base {test['base_exact_match']:.3f}{baseline}) "
            f"adapter {summary['adapter']}")


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(dcfg: DictConfig) -> None:
    """Hydra's own entry, used for its flags (--cfg job, --help, --multirun ...)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        launch(to_sweep_config(dcfg), list(HydraConfig.get().overrides.task))
    except ConfigError as exc:
        fail(exc.problems)


def launch(cfg: SweepConfig, overrides: list[str]) -> None:
    """ray.address=http://HOST:PORT submits the sweep as a Ray Job (jobs.py, nothing starts here); else run it."""
    from lora_tune import jobs

    if cfg.dry_run or not jobs.is_job_address(cfg.ray.address):  # a dry run plans locally, submits nothing
        run_sweep(resolve_resume(cfg))
        return
    try:
        code = jobs.submit(overrides, cfg)
    except jobs.JobError as exc:
        fail([str(exc)])
    if code:
        raise SystemExit(code)


def cli(argv: list[str] | None = None) -> None:
    """`python -m lora_tune.sweep [key=value ...]`.

    Plain overrides are composed with Hydra's compose API and validated here, so that every problem (Hydra's
    own included) is one line and exit code 2; arguments with Hydra flags go to the @hydra.main entry.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg.startswith("-") for arg in argv):
        sys.argv = [sys.argv[0], *argv]
        main()
        return
    try:
        launch(compose_config(argv), argv)
    except ConfigError as exc:
        fail(exc.problems)


if __name__ == "__main__":
    cli()
