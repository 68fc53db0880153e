"""Confirming the winner (eval.confirm_top_k): is the best trial the best config, or the luckiest seed?

After the search, the top `eval.confirm_top_k` finished configs by the sweep's metric are trained again, each with
`eval.confirm_seeds` other seeds (adapter init, data order, dropout), the full `max_steps`, as trials of a second
Ray Tune run (tuner.confirm_tuner: the same trainable, resources and retries). Each seed's value is that run's best
report by the metric, as for the search's trials; a config's values are its search trial's plus its seeds'. The
winner is the config with the best mean; the adapter exported is its search trial's. Its rows get the seeds, the
values, their mean and standard deviation (results.csv/json, the report, W&B's trials table); summary.json gets
the whole confirmation. Pure Python: no Ray here.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from lora_tune.config import Dimension, SweepConfig
from lora_tune.results import finite

CANDIDATE = "confirms"  # the confirmation trial's param naming the search trial it repeats (not a config key)
SEED_ENTRY = "confirm_seed"  # the search-space entry that sets each confirmation trial's seed
COLUMNS = ("confirm_seeds", "confirm_values", "confirm_mean", "confirm_std")


def seeds(cfg: SweepConfig) -> list[int]:
    """The other seeds each confirmed config is trained with (the search used cfg.seed)."""
    return [cfg.seed + offset for offset in range(1, cfg.eval.confirm_seeds + 1)]


def candidates(ranked: list[dict[str, Any]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """The finished trials to confirm, best first; none when fewer than two could be compared."""
    top = [row for row in ranked if row.get("status") == "TERMINATED"][: cfg.eval.confirm_top_k]
    return top if len(top) > 1 and cfg.eval.confirm_seeds > 0 else []


def confirmation_config(cfg: SweepConfig) -> SweepConfig:
    """The sweep's config with the seed as one more search-space entry, so each confirmation trial's params set
    its seed (the trainable turns search-space params into trial overrides), run to the end by a FIFO scheduler."""
    space = {**cfg.search_space, SEED_ENTRY: Dimension(key="seed", type="choice", values=seeds(cfg))}
    return dataclasses.replace(cfg, search_space=space, scheduler=dataclasses.replace(cfg.scheduler, name="fifo"))


def points(top: list[dict[str, Any]], trial_params: dict[str, dict[str, Any]], cfg: SweepConfig) -> list[dict]:
    """One param dict per (config, seed): the search trial's params, the seed, and which trial it repeats."""
    return [{**trial_params[row["trial_id"]], "seed": seed, CANDIDATE: row["trial_id"]}
            for row in top for seed in seeds(cfg)]


def values_by_candidate(confirm_rows: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, dict[int, float]]:
    """search trial id -> {seed: the confirmation trial's best value}; failed or metric-less trials are left out."""
    found: dict[str, dict[int, float]] = {}
    for row in confirm_rows:
        if row.get("status") == "TERMINATED" and finite(row.get(cfg.metric)):
            found.setdefault(row[CANDIDATE], {})[int(row["seed"])] = float(row[cfg.metric])
    return found


def with_confirmation(rows: list[dict[str, Any]], top: list[dict[str, Any]], found: dict[str, dict[int, float]],
                      cfg: SweepConfig) -> list[dict[str, Any]]:
    """The results rows, each confirmed config's with its seeds, values, mean and standard deviation."""
    confirmed = {row["trial_id"] for row in top}
    out = []
    for row in rows:
        if row.get("trial_id") not in confirmed:
            out.append(row)
            continue
        by_seed = {cfg.seed: row[cfg.metric], **found.get(row["trial_id"], {})}
        values = list(by_seed.values())
        out.append({**row, "confirm_seeds": " ".join(str(s) for s in by_seed),
                    "confirm_values": " ".join(f"{v:.6g}" for v in values),
                    "confirm_mean": statistics.mean(values),
                    "confirm_std": statistics.stdev(values) if len(values) > 1 else None})
    return out


def reranked(ranked: list[dict[str, Any]], rows: list[dict[str, Any]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """The candidates to export, best first: the confirmed configs by their mean, then the others as ranked."""
    by_id = {row["trial_id"]: row for row in rows}
    confirmed = [by_id[row["trial_id"]] for row in ranked if finite(by_id[row["trial_id"]].get("confirm_mean"))]
    confirmed.sort(key=lambda row: row["confirm_mean"] if cfg.mode == "min" else -row["confirm_mean"])
    ids = {row["trial_id"] for row in confirmed}
    return [*confirmed, *(by_id[row["trial_id"]] for row in ranked if row["trial_id"] not in ids)]


def summary(rows: list[dict[str, Any]], first: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:
    """summary.json's `confirmation`: each confirmed config's seeds and values, and whether the search's best
    trial (`first`) kept its place."""
    confirmed = [row for row in rows if row.get("confirm_mean") is not None]
    confirmed.sort(key=lambda row: row["confirm_mean"] if cfg.mode == "min" else -row["confirm_mean"])
    return {"top_k": cfg.eval.confirm_top_k, "seeds": [cfg.seed, *seeds(cfg)], "metric": cfg.metric,
            "search_best": first["trial_id"], "changed_winner": bool(confirmed) and
            confirmed[0]["trial_id"] != first["trial_id"],
            "configs": [{"trial_id": row["trial_id"], **{k: row[k] for k in COLUMNS}} for row in confirmed]}
