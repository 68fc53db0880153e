"""eval.confirm_top_k (lora_tune/confirm.py): which trials are confirmed, with which seeds and params, and how the
mean over seeds picks the winner. The end-to-end run (Ray Tune trials, results, W&B) is in test_tracking."""

from __future__ import annotations

import dataclasses

import pytest

from lora_tune import confirm as confirms
from lora_tune.compose import compose_config
from lora_tune.config import ConfigError, SweepConfig


def sweep_cfg(*overrides: str) -> SweepConfig:
    return compose_config(["experiment=tiny", "eval.confirm_top_k=2", "eval.confirm_seeds=2", *overrides])


def row(trial_id: str, loss: float, status: str = "TERMINATED") -> dict:
    return {"trial_id": trial_id, "role": "trial", "status": status, "eval_loss": loss}


def test_the_top_k_finished_trials_are_confirmed_with_the_next_seeds_and_their_own_params() -> None:
    cfg = sweep_cfg("seed=5")
    ranked = [row("a", 0.1), row("b", 0.2, "ERROR"), row("c", 0.3), row("d", 0.4)]
    top = confirms.candidates(ranked, cfg)
    assert [r["trial_id"] for r in top] == ["a", "c"]  # an errored trial is not a config to confirm
    params = {"a": {"train.lr": 1e-3, "peft.r": 8}, "c": {"train.lr": 1e-2, "peft.r": 4}}
    assert confirms.points(top, params, cfg) == [
        {"train.lr": 1e-3, "peft.r": 8, "seed": 6, "confirms": "a"},
        {"train.lr": 1e-3, "peft.r": 8, "seed": 7, "confirms": "a"},
        {"train.lr": 1e-2, "peft.r": 4, "seed": 6, "confirms": "c"},
        {"train.lr": 1e-2, "peft.r": 4, "seed": 7, "confirms": "c"}]
    # the seed is a search-space entry of the confirmation run, so the trainable turns it into the trial's seed
    confirm_cfg = confirms.confirmation_config(cfg)
    assert confirm_cfg.scheduler.name == "fifo"
    assert confirm_cfg.trial_config({"seed": 6, "train.lr": 1e-2}).seed == 6


def test_nothing_is_confirmed_when_off_or_with_one_candidate() -> None:
    ranked = [row("a", 0.1), row("b", 0.2)]
    assert confirms.candidates(ranked, sweep_cfg("eval.confirm_top_k=0")) == []
    assert confirms.candidates(ranked, sweep_cfg("eval.confirm_top_k=1")) == []
    assert confirms.candidates(ranked, sweep_cfg("eval.confirm_seeds=0")) == []
    assert confirms.candidates([row("a", 0.1), row("b", 0.2, "ERROR")], sweep_cfg()) == []


def test_the_best_mean_wins_even_when_the_search_ranked_it_second() -> None:
    cfg = sweep_cfg()
    rows = [row("lucky", 0.10), row("steady", 0.12), row("other", 0.50)]
    top = confirms.candidates(rows, cfg)
    found = {"lucky": {1: 0.20, 2: 0.18}, "steady": {1: 0.11, 2: 0.13}}  # lucky's search seed was the outlier
    confirmed = confirms.with_confirmation(rows, top, found, cfg)
    by_id = {r["trial_id"]: r for r in confirmed}
    assert by_id["lucky"]["confirm_seeds"] == "0 1 2" and by_id["lucky"]["confirm_values"] == "0.1 0.2 0.18"
    assert by_id["lucky"]["confirm_mean"] == pytest.approx(0.16)
    assert by_id["steady"]["confirm_mean"] == pytest.approx(0.12)
    assert by_id["steady"]["confirm_std"] == pytest.approx(0.01)
    assert "confirm_mean" not in by_id["other"]
    assert [r["trial_id"] for r in confirms.reranked(rows, confirmed, cfg)] == ["steady", "lucky", "other"]
    summary = confirms.summary(confirmed, top[0], cfg)
    assert summary["changed_winner"] and summary["search_best"] == "lucky"
    assert [c["trial_id"] for c in summary["configs"]] == ["steady", "lucky"]


def test_mode_max_prefers_the_highest_mean_and_a_failed_seed_is_left_out() -> None:
    cfg = dataclasses.replace(sweep_cfg(), metric="eval_exact_match", mode="max")
    rows = [{**row("a", 0.0), "eval_exact_match": 0.9}, {**row("b", 0.0), "eval_exact_match": 0.8}]
    confirm_rows = [{"status": "TERMINATED", "eval_exact_match": 0.5, "seed": 1, "confirms": "a"},
                    {"status": "ERROR", "eval_exact_match": None, "seed": 2, "confirms": "a"},
                    {"status": "TERMINATED", "eval_exact_match": 0.8, "seed": 1, "confirms": "b"},
                    {"status": "TERMINATED", "eval_exact_match": 0.8, "seed": 2, "confirms": "b"}]
    found = confirms.values_by_candidate(confirm_rows, cfg)
    assert found == {"a": {1: 0.5}, "b": {1: 0.8, 2: 0.8}}
    confirmed = confirms.with_confirmation(rows, rows, found, cfg)
    assert [r["trial_id"] for r in confirms.reranked(rows, confirmed, cfg)] == ["b", "a"]


def test_bad_confirm_keys_are_one_line_each() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["eval.confirm_top_k=-1", "eval.confirm_seeds=two"])
    assert sorted(err.value.problems) == ["eval.confirm_seeds: got 'two'; accepted: an integer >= 0",
                                          "eval.confirm_top_k: got -1; accepted: an integer >= 0"]
