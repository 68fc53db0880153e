"""Weights & Biases, the whole integration: one run per trial grouped by sweep, a sweep run, the winning adapter
as a model artifact linked to the W&B Registry, and `sync` for runs recorded offline.

The only module that imports wandb (`python -m lora_tune.registry sync <sweep>` is its command line). Runs are
created in the driver process (the API key never has to reach workers or Ray's runtime_env; wandb reads it from
WANDB_API_KEY). Every W&B call during a sweep is guarded: W&B being slow, failing or unreachable warns once and
never fails a sweep; the local results are complete without it. Offline, linking to the Registry is impossible,
so the link is recorded in <sweep>/pending_links.json and `sync` performs it later (once: done links are
recorded there too). wandb writes its run folders on a local disk (`local_dir`); when the sweep lives in an
object store, each finished run folder is copied there (wandb/offline-run-*), so no file stays on one node.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_tune import __version__
from lora_tune.config import WandbConfig, flatten
from lora_tune.redaction import redact
from lora_tune.results import best, columns
from lora_tune.storage import Store

PENDING_LINKS = "pending_links.json"
# Logged at every report, against the trial's `step`, with every eval_<metric> the trial reports.
STEP_METRICS = ("train_loss", "eval_loss", "lr", "tokens_per_s", "step_time_s", "peak_mem_mb", "eval_time_frac",
                "checkpoint_time_frac", "checkpoint_bytes")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def resolve_mode(cfg: WandbConfig) -> str:
    """auto -> online when an API key is available, offline otherwise."""
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def slug(text: str, limit: int = 64) -> str:
    """W&B-safe name (run ids, artifact names, aliases): letters, digits, '-', '_', '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.")[-limit:] or "x"


def artifact_name(base_model: str, sweep_name: str) -> str:
    """embedded:smollm2-135m + quickstart-2026 -> smollm2-135m-quickstart-2026 (hub ids keep their last part)."""
    base = Path(base_model.split(":")[-1].rstrip("/")).name
    return slug(f"{base}-{sweep_name}", limit=128)


def registry_target(cfg: WandbConfig) -> str:
    return f"wandb-registry-{cfg.registry}/{cfg.collection}"


def dataset_fingerprint(path: str) -> str | None:
    """sha256 over the data files (name + bytes) of a local data file or folder; None for a hub dataset id."""
    from lora_tune.data import local_path

    found = local_path(path)
    if not found.exists():
        return None
    digest = hashlib.sha256()
    files = [found] if found.is_file() else [p for p in found.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file()]
    for file in sorted(files):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def git_commit() -> str | None:
    """The commit of the checkout lora_tune runs from, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def model_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """What the model artifact records: how to judge and reproduce the adapter."""
    data_path = (summary.get("config") or {}).get("data", {}).get("path", "")
    return {
        "metric": summary["metric"], "mode": summary["mode"], "value": summary["value"],
        "trial_id": summary["trial_id"], "hyperparameters": summary.get("hyperparameters"),
        "config": summary.get("config"), "base_model": summary["base_model"], "bits": summary["bits"],
        "test": summary.get("test"), "dataset_path": data_path, "dataset_fingerprint": dataset_fingerprint(data_path),
        "project_version": __version__, "git_commit": git_commit(),
    }


def table_cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _guarded(method: Callable) -> Callable:
    """Turn any W&B exception into one warning; afterwards the tracker is a no-op."""

    @functools.wraps(method)
    def wrapper(self: TrialTracker, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B trouble must never end a sweep
            self.enabled = False
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            print(f"lora_tune: warning: W&B disabled for the rest of this sweep ({type(exc).__name__}: {reason}); "
                  "local results are complete", file=sys.stderr)
            return None

    return wrapper


class TrialTracker:
    """Mirrors trials into W&B runs (started, one history row per report, ended with a summary), then logs
    the sweep run with the trials table and the winning adapter as a model artifact.

    `store` is the sweep's storage (pending_links.json, copies of the run folders); `local_dir` the local folder
    wandb writes under (the sweep dir itself when the sweep is on a local disk)."""

    def __init__(self, cfg: WandbConfig, sweep_name: str, store: Store, local_dir: Path, base_model: str,
                 metric: str = "eval_loss", mode: str = "min"):
        self.cfg = cfg
        self.mode = resolve_mode(cfg)
        self.enabled = self.mode != "disabled"
        self.sweep_name = sweep_name
        self.store = store
        self.local_dir = Path(local_dir)
        self.base_model = base_model
        self.metric, self.metric_mode = metric, mode
        self.runs: dict[str, Any] = {}
        self.run_ids: dict[str, str] = {}
        self.best: dict[str, float] = {}
        self.artifact = artifact_name(base_model, sweep_name)
        self.aliases = ["best", slug(sweep_name)]

    def _init(self, **kwargs: Any) -> Any:
        import wandb

        self.local_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.cfg.project, entity=self.cfg.entity, group=self.sweep_name,
                          mode=self.mode, dir=str(self.local_dir), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off"), **kwargs)

    @_guarded
    def trial_started(self, trial_id: str, config: dict[str, Any], role: str = "trial") -> None:
        if trial_id in self.runs:
            return  # a retried trial keeps its run
        flat = flatten(redact(config))
        tags = [f"bits={flat.get('quant.bits')}", f"base={Path(self.base_model).name}", f"role={role}"]
        run = self._init(name=trial_id, id=slug(f"{self.sweep_name}-{trial_id}"), job_type=role,
                         config=flat, tags=tags)
        run.define_metric("step")
        for name in STEP_METRICS:
            run.define_metric(name, step_metric="step")
        self.runs[trial_id] = run
        self.run_ids[trial_id] = run.id

    @_guarded
    def trial_result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        run = self.runs.get(trial_id)
        if run is None:
            return
        names = ("step", *STEP_METRICS, *(k for k in metrics if k.startswith("eval_") and k not in STEP_METRICS))
        row = {k: metrics[k] for k in names if isinstance(metrics.get(k), (int, float))}
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)):
            self.best[trial_id] = best([value, self.best.get(trial_id, value)], self.metric_mode, lambda v: v)
        run.log(row)  # W&B's own _step keeps counting; charts use `step` (a retry may repeat steps)

    @_guarded
    def trial_ended(self, trial_id: str, summary: dict[str, Any]) -> None:
        run = self.runs.pop(trial_id, None)
        if run is None:
            return
        for key, value in summary.items():
            run.summary[key] = value
        if trial_id in self.best:
            run.summary[f"best_{self.metric}"] = self.best[trial_id]
        run.finish(exit_code=1 if summary.get("status") == "ERROR" else 0)
        self._copy_run(run)

    @_guarded
    def close(self) -> None:
        for trial_id in list(self.runs):
            self.trial_ended(trial_id, {})

    @property
    def sweep_run_id(self) -> str:
        return slug(f"{self.sweep_name}-sweep")

    @_guarded
    def log_sweep(self, rows: list[dict[str, Any]], summary: dict[str, Any] | None,
                  sweep_config: dict[str, Any], best_dir: Path | None = None) -> None:
        """The sweep run: a table of every trial, the winner, and the winner's adapter as a model artifact
        (`best_dir`: a local copy of best/, with adapter/ and summary.json)."""
        run = self._init(name=self.sweep_name, id=self.sweep_run_id, job_type="sweep", config=flatten(sweep_config),
                         tags=[f"base={Path(self.base_model).name}"])
        try:
            run.log({"trials": self._trials_table(rows, summary)})
            run.summary.update(self._sweep_summary(rows, summary))
            if summary is not None and best_dir is not None:
                self._register(run, run.log_artifact(self._model_artifact(summary, best_dir), aliases=self.aliases))
        finally:
            run.finish()
            self._copy_run(run)

    def _copy_run(self, run: Any) -> None:
        """On object storage, copy a finished run folder there (wandb/offline-run-.../), so it is not node-local."""
        if self.store.is_local or self.mode != "offline":
            return
        folder = Path(run.settings.sync_file).parent
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.store.write_bytes(str(path.relative_to(self.local_dir)), path.read_bytes())

    def _trials_table(self, rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> Any:
        import wandb

        names = [*columns(rows), "winner", "wandb_run_id"]
        winner = summary["trial_id"] if summary else None
        data = [[table_cell(row.get(name)) for name in names[:-2]]
                + [row.get("trial_id") == winner, self.run_ids.get(str(row.get("trial_id")))] for row in rows]
        return wandb.Table(columns=names, data=data)

    def _sweep_summary(self, rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, Any]:
        counts = {"trials": len(rows), "errors": sum(r.get("status") == "ERROR" for r in rows),
                  "stopped_early": sum(bool(r.get("stopped_early")) for r in rows)}
        if summary is None:
            return {**counts, "winner": None}
        test = summary.get("test", {})
        scores = {f"test_{key}": value for key, value in test.items()
                  if key.startswith(("base_", "winner_", "default_lora_")) and isinstance(value, (int, float))}
        confirmed = {f"winner_{key}": value for row in rows if row.get("trial_id") == summary["trial_id"]
                     for key, value in row.items() if key in ("confirm_seeds", "confirm_mean", "confirm_std")}
        return {**counts, "winner": summary["trial_id"], "metric": summary["metric"],
                f"best_{summary['metric']}": summary["value"], "artifact": self.artifact, **scores, **confirmed}

    def _model_artifact(self, summary: dict[str, Any], best_dir: Path) -> Any:
        import wandb

        artifact = wandb.Artifact(self.artifact, type="model", metadata=model_metadata(summary),
                                  description=f"LoRA adapter of {summary['base_model']}, winner of "
                                              f"sweep {self.sweep_name}")
        for file in sorted(p for p in (best_dir / "adapter").rglob("*") if p.is_file()):
            artifact.add_file(str(file), name=f"adapter/{file.relative_to(best_dir / 'adapter')}")
        artifact.add_file(str(best_dir / "summary.json"), name="summary.json")
        return artifact

    def _register(self, run: Any, artifact: Any) -> None:
        """Online: link to the Registry now. Offline (or if linking fails): record the link for `sync`."""
        target = registry_target(self.cfg)
        link = {"artifact": self.artifact, "alias": slug(self.sweep_name), "type": "model",
                "project": self.cfg.project, "entity": self.cfg.entity, "target": target,
                "run_id": run.id, "run_file": os.path.relpath(run.settings.sync_file, self.local_dir),
                "status": "pending", "linked_at": None}
        if self.mode == "online":
            try:
                run.link_artifact(artifact, target, aliases=[slug(self.sweep_name)])
                return
            except Exception:
                record_link(self.store, link)
                raise
        record_link(self.store, link)

    def refs(self) -> dict[str, Any]:
        """What summary.json records about W&B (names are fixed before anything is logged)."""
        if self.mode == "disabled":
            return {"mode": "disabled"}
        return {"mode": self.mode, "project": self.cfg.project, "entity": self.cfg.entity,
                "group": self.sweep_name, "trial_runs": dict(self.run_ids), "sweep_run": self.sweep_run_id,
                "artifact": f"{self.artifact}:{self.aliases[1]}", "artifact_aliases": list(self.aliases),
                "registry_target": registry_target(self.cfg),
                "pending_links": None if self.mode == "online" else f"{self.store.uri}/{PENDING_LINKS}"}


# --- pending Registry links and `sync` ------------------------------------------------------------------


def load_links(store: Store) -> list[dict[str, Any]]:
    return store.read_json(PENDING_LINKS)["links"] if store.is_file(PENDING_LINKS) else []


def save_links(store: Store, links: list[dict[str, Any]]) -> None:
    store.write_json(PENDING_LINKS, {"links": links})


def record_link(store: Store, link: dict[str, Any]) -> None:
    """Add (or replace, by artifact + target) a pending link."""
    links = [old for old in load_links(store)
             if (old["artifact"], old["target"]) != (link["artifact"], link["target"])]
    save_links(store, [*links, link])


def offline_run_files(store: Store) -> list[str]:
    """The .wandb files of the sweep's offline runs, relative to the sweep."""
    return [f"wandb/{name}" for name in store.files("wandb")
            if name.startswith("offline-run-") and name.endswith(".wandb") and name.count("/") == 1]


def is_synced(store: Store, run_file: str) -> bool:
    """wandb sync leaves <run>.wandb.synced next to a run it uploaded."""
    return store.is_file(f"{run_file}.synced")


def local_runs(store: Store, run_files: list[str]) -> Path:
    """A local folder holding these runs' folders (the sweep itself on a local disk, else a download)."""
    if store.is_local:
        return Path(store.root)
    from lora_tune.storage import cache_dir

    local = cache_dir(f"{store.uri}/wandb-sync")
    for run_file in run_files:
        folder = run_file.rsplit("/", 1)[0]
        for name in store.files(folder):
            target = local / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_bytes(f"{folder}/{name}"))
    return local


def wandb_sync(local: Path, run_dirs: list[Path], timeout_s: float) -> int:
    """`wandb sync` (the wandb CLI of this environment) on run directories, from `local` (its debug log
    lands in <local>/wandb); its own process group, so a hung upload is ended whole at the timeout.
    The key comes from the environment (WANDB_API_KEY)."""
    cmd = [sys.executable, "-m", "wandb", "sync", "--yes", *(str(d.resolve()) for d in run_dirs)]
    proc = subprocess.Popen(cmd, cwd=local, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"lora_tune: wandb sync did not finish in {timeout_s:.0f}s", file=sys.stderr)
        return 124


def perform_link(api: Any, link: dict[str, Any]) -> None:
    entity = link.get("entity") or api.default_entity
    artifact = api.artifact(f"{entity}/{link['project']}/{link['artifact']}:{link['alias']}", type=link["type"])
    artifact.link(link["target"], aliases=[link["alias"]])


def upload_runs(store: Store, local: Path, run_files: list[str], timeout_s: float,
                run_sync: Callable[[Path, list[Path], float], int]) -> list[str]:
    """`wandb sync` the runs not uploaded yet; returns the ones uploaded now (their .synced marker is written
    back to the sweep's storage)."""
    if not run_files:
        return []
    run_sync(local, [(local / f).parent for f in run_files], timeout_s)
    synced = [f for f in run_files if (local / f"{f}.synced").exists()]
    if not store.is_local:
        for run_file in synced:
            store.write_bytes(f"{run_file}.synced", (local / f"{run_file}.synced").read_bytes())
    return synced


def sync(store: Store, api: Any = None, run_sync: Callable[[Path, list[Path], float], int] = wandb_sync,
         timeout_s: float = 600.0) -> dict[str, list[str]]:
    """Upload unsynced offline runs, then perform each pending link whose run is uploaded. Idempotent."""
    unsynced = [f for f in offline_run_files(store) if not is_synced(store, f)]
    synced = upload_runs(store, local_runs(store, unsynced), unsynced, timeout_s, run_sync)
    links = load_links(store)
    done: dict[str, list[str]] = {"synced": [f.split("/")[1] for f in synced],
                                  "linked": [], "already_linked": [], "waiting": [], "failed": []}
    for link in links:
        name = f"{link['artifact']}:{link['alias']} -> {link['target']}"
        if link["status"] == "linked":
            done["already_linked"].append(name)
            continue
        if not is_synced(store, link["run_file"]):
            done["waiting"].append(name)
            continue
        try:
            import wandb

            api = api if api is not None else wandb.Api()
            perform_link(api, link)
        except Exception as exc:  # noqa: BLE001 - report and keep the link pending
            done["failed"].append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        link.update(status="linked", linked_at=datetime.datetime.now(datetime.timezone.utc).isoformat())
        save_links(store, links)
        done["linked"].append(name)
    return done
