"""Weights & Biases: one run per trial grouped by sweep, a sweep run, and the winning adapter as a model artifact.

    python -m lora_tune.registry sync runs/<sweep>     # upload offline runs, then perform pending Registry links

The only module that imports wandb. Runs are created in the driver process (the API key never has to
reach workers or Ray's runtime_env; wandb reads it from WANDB_API_KEY). Every W&B call during a sweep is
guarded: W&B being slow, failing or unreachable warns once and never fails a sweep; the local results are
complete without it. Offline, linking to the Registry is impossible, so the link is recorded in
<sweep_dir>/pending_links.json and `sync` performs it later (once: done links are recorded there too).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_tune import __version__
from lora_tune.atomic import write_atomic
from lora_tune.config import WandbConfig, flatten
from lora_tune.report import columns

PENDING_LINKS = "pending_links.json"
# Logged at every report, against the trial's `step`.
STEP_METRICS = ("train_loss", "eval_loss", "eval_exact_match", "lr", "tokens_per_s", "step_time_s", "peak_mem_mb")
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
    """sha256 over the data files (name + bytes) of a local data folder; None for a hub dataset id."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file()):
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
    the sweep run with the trials table and the winning adapter as a model artifact."""

    def __init__(self, cfg: WandbConfig, sweep_name: str, sweep_dir: Path, base_model: str,
                 metric: str = "eval_loss", mode: str = "min"):
        self.cfg = cfg
        self.mode = resolve_mode(cfg)
        self.enabled = self.mode != "disabled"
        self.sweep_name = sweep_name
        self.sweep_dir = sweep_dir
        self.base_model = base_model
        self.metric, self.metric_mode = metric, mode
        self.runs: dict[str, Any] = {}
        self.run_ids: dict[str, str] = {}
        self.best: dict[str, float] = {}
        self.artifact = artifact_name(base_model, sweep_name)
        self.aliases = ["best", slug(sweep_name)]

    def _init(self, **kwargs: Any) -> Any:
        import wandb

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.cfg.project, entity=self.cfg.entity, group=self.sweep_name,
                          mode=self.mode, dir=str(self.sweep_dir), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off"), **kwargs)

    @_guarded
    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        if trial_id in self.runs:
            return  # a retried trial keeps its run
        flat = flatten(config)
        tags = [f"bits={flat.get('quant.bits')}", f"base={Path(self.base_model).name}"]
        run = self._init(name=trial_id, id=slug(f"{self.sweep_name}-{trial_id}"), job_type="trial",
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
        row = {k: metrics[k] for k in ("step", *STEP_METRICS) if isinstance(metrics.get(k), (int, float))}
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)):
            better = min if self.metric_mode == "min" else max
            self.best[trial_id] = better(value, self.best.get(trial_id, value))
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

    @_guarded
    def close(self) -> None:
        for trial_id in list(self.runs):
            self.trial_ended(trial_id, {})

    @property
    def sweep_run_id(self) -> str:
        return slug(f"{self.sweep_name}-sweep")

    @_guarded
    def log_sweep(self, rows: list[dict[str, Any]], summary: dict[str, Any] | None,
                  sweep_config: dict[str, Any]) -> None:
        """The sweep run: a table of every trial, the winner, and the winner's adapter as a model artifact."""
        run = self._init(name=self.sweep_name, id=self.sweep_run_id, job_type="sweep", config=flatten(sweep_config),
                         tags=[f"base={Path(self.base_model).name}"])
        try:
            run.log({"trials": self._trials_table(rows, summary)})
            run.summary.update(self._sweep_summary(rows, summary))
            if summary is not None:
                self._register(run, run.log_artifact(self._model_artifact(summary), aliases=self.aliases))
        finally:
            run.finish()

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
        return {**counts, "winner": summary["trial_id"], "metric": summary["metric"],
                f"best_{summary['metric']}": summary["value"], "artifact": self.artifact,
                "test_winner_exact_match": summary.get("test", {}).get("winner_exact_match"),
                "test_base_exact_match": summary.get("test", {}).get("base_exact_match")}

    def _model_artifact(self, summary: dict[str, Any]) -> Any:
        import wandb

        best = self.sweep_dir / "best"
        artifact = wandb.Artifact(self.artifact, type="model", metadata=model_metadata(summary),
                                  description=f"LoRA adapter of {summary['base_model']}, winner of "
                                              f"sweep {self.sweep_name}")
        for file in sorted(p for p in (best / "adapter").rglob("*") if p.is_file()):
            artifact.add_file(str(file), name=f"adapter/{file.relative_to(best / 'adapter')}")
        artifact.add_file(str(best / "summary.json"), name="summary.json")
        return artifact

    def _register(self, run: Any, artifact: Any) -> None:
        """Online: link to the Registry now. Offline (or if linking fails): record the link for `sync`."""
        target = registry_target(self.cfg)
        link = {"artifact": self.artifact, "alias": slug(self.sweep_name), "type": "model",
                "project": self.cfg.project, "entity": self.cfg.entity, "target": target,
                "run_id": run.id, "run_file": os.path.relpath(run.settings.sync_file, self.sweep_dir),
                "status": "pending", "linked_at": None}
        if self.mode == "online":
            try:
                run.link_artifact(artifact, target, aliases=[slug(self.sweep_name)])
                return
            except Exception:
                record_link(self.sweep_dir, link)
                raise
        record_link(self.sweep_dir, link)

    def refs(self) -> dict[str, Any]:
        """What summary.json records about W&B (names are fixed before anything is logged)."""
        if self.mode == "disabled":
            return {"mode": "disabled"}
        return {"mode": self.mode, "project": self.cfg.project, "entity": self.cfg.entity,
                "group": self.sweep_name, "trial_runs": dict(self.run_ids), "sweep_run": self.sweep_run_id,
                "artifact": f"{self.artifact}:{self.aliases[1]}", "artifact_aliases": list(self.aliases),
                "registry_target": registry_target(self.cfg),
                "pending_links": None if self.mode == "online" else str(self.sweep_dir / PENDING_LINKS)}


# --- pending Registry links and `sync` ------------------------------------------------------------------


def load_links(sweep_dir: Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / PENDING_LINKS
    return json.loads(path.read_text())["links"] if path.exists() else []


def save_links(sweep_dir: Path, links: list[dict[str, Any]]) -> None:
    write_atomic(Path(sweep_dir) / PENDING_LINKS, json.dumps({"links": links}, indent=2) + "\n")


def record_link(sweep_dir: Path, link: dict[str, Any]) -> None:
    """Add (or replace, by artifact + target) a pending link."""
    links = [old for old in load_links(sweep_dir)
             if (old["artifact"], old["target"]) != (link["artifact"], link["target"])]
    save_links(sweep_dir, [*links, link])


def offline_run_files(sweep_dir: Path) -> list[Path]:
    return sorted(Path(sweep_dir).glob("wandb/offline-run-*/*.wandb"))


def is_synced(run_file: Path) -> bool:
    """wandb sync leaves <run>.wandb.synced next to a run it uploaded."""
    return run_file.with_suffix(".wandb.synced").exists()


def wandb_sync(sweep_dir: Path, run_dirs: list[Path], timeout_s: float) -> int:
    """`wandb sync` (the wandb CLI of this environment) on run directories, from the sweep dir (its debug log
    lands in <sweep_dir>/wandb); its own process group, so a hung upload is ended whole at the timeout.
    The key comes from the environment (WANDB_API_KEY)."""
    cmd = [sys.executable, "-m", "wandb", "sync", "--yes", *(str(d.resolve()) for d in run_dirs)]
    proc = subprocess.Popen(cmd, cwd=sweep_dir, stdin=subprocess.DEVNULL, start_new_session=True)
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


def sync(sweep_dir: Path, api: Any = None, run_sync: Callable[[Path, list[Path], float], int] = wandb_sync,
         timeout_s: float = 600.0) -> dict[str, list[str]]:
    """Upload unsynced offline runs, then perform each pending link whose run is uploaded. Idempotent."""
    sweep_dir = Path(sweep_dir)
    unsynced = [f for f in offline_run_files(sweep_dir) if not is_synced(f)]
    if unsynced:
        run_sync(sweep_dir, [f.parent for f in unsynced], timeout_s)
    links = load_links(sweep_dir)
    done: dict[str, list[str]] = {"synced": [f.parent.name for f in unsynced if is_synced(f)],
                                  "linked": [], "already_linked": [], "waiting": [], "failed": []}
    for link in links:
        name = f"{link['artifact']}:{link['alias']} -> {link['target']}"
        if link["status"] == "linked":
            done["already_linked"].append(name)
            continue
        if not is_synced(sweep_dir / link["run_file"]):
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
        save_links(sweep_dir, links)
        done["linked"].append(name)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lora_tune.registry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("sync", help="upload the sweep's offline runs, then perform its pending Registry links")
    cmd.add_argument("sweep_dir", type=Path)
    cmd.add_argument("--timeout", type=float, default=600.0, help="seconds wandb sync may take (default 600)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"lora_tune: error: sweep_dir: {args.sweep_dir} is not a directory; accepted: a sweep folder "
              "such as runs/<sweep_name>", file=sys.stderr)
        raise SystemExit(2)
    done = sync(args.sweep_dir, timeout_s=args.timeout)
    for state in ("linked", "already_linked", "waiting", "failed"):
        for name in done[state]:
            print(f"lora_tune: {state.replace('_', ' ')}: {name}")
    print(f"lora_tune: synced {len(done['synced'])} run(s); {len(done['linked'])} linked now, "
          f"{len(done['already_linked'])} already, {len(done['waiting']) + len(done['failed'])} still pending")
    raise SystemExit(1 if done["waiting"] or done["failed"] else 0)


if __name__ == "__main__":
    main()
