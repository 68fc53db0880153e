"""The benchmark harness end to end in --quick mode on the tiny model: JSON and markdown structure only.

    .venv/bin/python -m pytest -q tests/test_benchmarks.py

Benchmarks are measurements, not tests: nothing here looks at how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run
from benchmarks.trials import lora_flops_per_token, mfu

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    run.main(["--quick", "--model", "tiny", "--only", "P2,P5,PACK,CKPT", "--out", str(out)])
    return json.loads((out / "results.json").read_text()), out


def test_json_has_settings_raw_numbers_ratios_targets(quick_results) -> None:
    report, _ = quick_results
    assert report["quick"] is True and report["only"] == ["P2", "P5", "PACK", "CKPT"]
    assert len(report["load_avg_start"]) == 3 and len(report["load_avg_end"]) == 3
    tiny = report["models"]["tiny"]
    assert tiny["settings"]["model"] == "tiny"
    assert set(tiny["comparisons"]) == {"P2", "P5", "PACK", "CKPT"}
    for section in tiny["comparisons"].values():
        assert "error" not in section, section.get("error")
        assert {"what", "settings", "raw", "ratio", "target", "met"} <= set(section)


def test_first_step_pairs_really_reuse_and_reload_the_base(quick_results) -> None:
    report, _ = quick_results
    p2 = report["models"]["tiny"]["comparisons"]["P2"]
    assert set(p2["raw"]) == {"warm_4bit"}  # the cold GGUF arm needs SmolLM2 (the tiny model is no GGUF)
    four = p2["raw"]["warm_4bit"]
    assert four["warm_up"]["base_reused"] is False
    for reused, reloaded in four["pairs"]:
        assert reused["base_reused"] is True and reloaded["base_reused"] is False
        assert reused["time_to_first_step_s"] > 0 and reloaded["time_to_first_step_s"] > 0
    assert four["ratio"] == pytest.approx(four["reused_median_s"] / four["reloaded_median_s"], rel=1e-3)
    assert p2["met"] is None  # judged on the cold GGUF arm only


def test_memory_footprint_shrinks_with_bits(quick_results) -> None:
    report, _ = quick_results
    p5 = report["models"]["tiny"]["comparisons"]["P5"]
    for dtype in ("fp32", "bf16"):
        sizes = p5["raw"]["bytes"][dtype]
        assert sizes["4"] < sizes["8"] < sizes["16"]
    assert p5["raw"]["bytes"]["bf16"]["16"] < p5["raw"]["bytes"]["fp32"]["16"]
    assert p5["met"] is None  # the target is judged on SmolLM2-135M only


def test_packing_and_checkpoint_bytes_are_measured(quick_results) -> None:
    report, _ = quick_results
    pack = report["models"]["tiny"]["comparisons"]["PACK"]
    assert pack["raw"]["padded"]["tokens_per_s"] > 0 and pack["raw"]["packed"]["tokens_per_s"] > 0
    ckpt = report["models"]["tiny"]["comparisons"]["CKPT"]["raw"]["bytes"]
    assert 0 < ckpt["after"] < ckpt["before"]  # adapter-only evaluation checkpoints write less


def test_markdown_table_has_a_row_per_comparison(quick_results) -> None:
    _, out = quick_results
    text = (out / "results.md").read_text()
    assert "| model | comparison | measured | ratio | target | met |" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 4 and all(any(key in r for r in rows) for key in ("P2", "P5", "packing", "checkpoint"))
    assert "## Settings" in text and "Load average" in text
    assert "4*N_base + 6*N_lora" in text


def test_lora_flops_formula_and_mfu_only_with_a_peak() -> None:
    assert lora_flops_per_token(100, 10, 2, 8, 4.0) == 4 * 100 + 6 * 10 + 12 * 2 * 4.0 * 8
    assert mfu(1000.0, 2e6, None) is None
    assert mfu(1000.0, 2e6, 4e9) == pytest.approx(0.5)


def test_unknown_comparison_exits_2_naming_the_accepted_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--only", "P9"])
    assert exc.value.code == 2
    assert "--only: unknown P9; accepted: P1, P2, P3, P4, P5, PACK, CKPT, TPS" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", ["asha", "fifo"])
def test_every_sweep_the_benchmarks_run_composes(scheduler: str, tmp_path: Path) -> None:
    """P1, P3 and P4 are too slow for --quick on every run: their configs at least compose and validate."""
    from benchmarks.common import compose
    from benchmarks.settings import SETTINGS

    for settings in SETTINGS.values():
        cfg = compose(settings.overrides(scheduler), tmp_path, "p1")
        assert cfg.scheduler.name == scheduler and cfg.num_samples == settings.num_samples
        assert compose(settings.quickstart_overrides(), tmp_path, "p3").experiment == "quickstart"


def test_the_bench_budget_counts_p4_as_its_hf_side_and_explains_an_overrun() -> None:
    """A full run reuses P1's ASHA sweep for P4, so P4 costs its HF search; over 45 minutes, results.md says so."""
    from benchmarks.notes import bench_budget_reason, section_costs

    def sweep(steps: int) -> dict:
        return {"steps_trained": steps}

    comparisons = {
        "P1": {"bench_wall_s": 1500.0, "raw": {"fifo": sweep(480), "asha": sweep(320)}},
        "P3": {"bench_wall_s": 1000.0, "raw": {"sweep": sweep(160), "ideal": {"steps": 160}}},
        "P4": {"bench_wall_s": 1480.0, "raw": {"hf": {"wall_s": 930.0, **sweep(480)}}},
        "P5": {"bench_wall_s": 20.0},
    }
    assert section_costs(comparisons) == {"P1": 1500.0, "P3": 1000.0, "P4": 930.0, "P5": 20.0}
    reason = bench_budget_reason(comparisons)
    assert reason is not None and "3450 s" in reason and "1600 optimizer steps" in reason
    comparisons["P1"]["bench_wall_s"] = 300.0
    assert bench_budget_reason(comparisons) is None  # 2250 s: within 45 minutes


def test_the_make_sweep_note_gives_the_trials_phase_floor_from_its_core_seconds() -> None:
    """Trials and the references beside them (base scoring, baseline training and scoring) on 2 cores."""
    from benchmarks.notes import work_text

    clone = {"phases": {"trials_s": 371}, "work_core_s": {"trials": 490, "base_scoring": 60, "baseline_training": 80,
                                                          "baseline_scoring": 70}}
    text = work_text(clone)
    assert "held 700 core-seconds" in text and "cannot take less than 350 s (it took 371 s)" in text
    assert work_text({"phases": {"trials_s": 371}}) == "" and work_text(None) == ""


def test_the_precision_note_reports_bf16_against_fp32_only_when_measured() -> None:
    from benchmarks.notes import precision_text

    trials = {"16bit": {"fp32": [0.06], "bf16": [0.07], "wall_fp32_s": 100.0, "wall_bf16_s": 75.0},
              "4bit": {"fp32": [0.08], "bf16": [0.07], "wall_fp32_s": 100.0, "wall_bf16_s": 70.0}}
    phases = {"ray_start_s": 10, "trials_s": 250, "after_trials_s": 40}
    bf16 = {"sweep_s": 300.0, "phases": phases, "winner_eval_loss": 0.05, "winner_test_exact_match": 0.85}
    fp32 = {"sweep_s": 440.0, "phases": phases, "winner_eval_loss": 0.051, "winner_test_exact_match": 0.86}
    measured = {"auto_on_this_cpu": "bf16", "why": "AVX512-BF16", "trials_30_steps": trials, "bf16": bf16, "fp32": fp32}
    text = precision_text(measured, "bf16")
    assert "resolves to bf16 on this CPU (AVX512-BF16), so the numbers above were measured in bf16" in text
    assert "took 300 s in bf16" in text and "vs 440 s in fp32" in text and "0.75x and 0.70x the time" in text
    assert "over" not in text  # one seed: no average
    trials["16bit_more_seeds"] = {"1": {"fp32": [0.10], "bf16": [0.09], "wall_fp32_s": 100.0, "wall_bf16_s": 75.0}}
    assert "over 2 seeds at 16 bits the final eval loss averaged 0.0800 (bf16) vs 0.0800 (fp32), per seed -10.0% " \
           "to +16.7%" in precision_text(measured, None)
    assert precision_text(None, "bf16") is None


def test_the_p3_note_tells_idle_cores_from_slower_jobs_by_the_work_floor() -> None:
    from benchmarks.notes import inside_actors_text

    work = {"trials": 350, "base_scoring": 36, "baseline_training": 55, "baseline_scoring": 59}  # floor 250 s
    slower = inside_actors_text({"work_core_s": work}, {"pool_s": 224.0})
    assert "ran the same jobs in 224 s, under that floor" in slower and "1.12x longer inside" in slower
    assert "the sweep's cores idled" in inside_actors_text({"work_core_s": work}, {"pool_s": 260.0})
    assert inside_actors_text({}, {"pool_s": 224.0}) == ""


def test_the_space_comparison_runs_the_old_and_the_new_default_space_on_each_task(tmp_path: Path) -> None:
    """SPACE (benchmarks/space.py): the before arm is the space before issue 34, the after arm today's default;
    the gain is after - before with the two standard errors combined, and the table shows both winners."""
    from benchmarks import space
    from benchmarks.common import compose

    for task in space.TASKS:
        before, after = (compose([f"data={task}", *space.ARMS[arm]], tmp_path, arm).search_space
                         for arm in ("before", "after"))
        assert (before["lr"].low, before["lr"].high) == (3e-4, 3e-3) and "qv" in before["target_modules"].values
        assert after["lr"].low > before["lr"].low and "qv" not in after["target_modules"].values
        assert {k: v for k, v in before.items() if k not in ("lr", "target_modules")} == \
               {k: v for k, v in after.items() if k not in ("lr", "target_modules")}  # nothing else differs

    def run(arm: str, test: float, se: float) -> dict:
        return {"task": "dates", "arm": arm, "metric": "exact_match", "winner": f"t_{arm}",
                "hyperparameters": {"r": 8, "lr": 0.002}, "eval_loss": 0.05, "confirm_mean": 0.06, "test": test,
                "test_se": se, "base": 0.05, "default_lora": 0.2, "wall_s": 600.0}

    result = space.compare([run("before", 0.80, 0.03), run("after", 0.85, 0.04)], [])
    assert result["gain"]["dates"]["difference"] == pytest.approx(0.05)
    assert result["gain"]["dates"]["se"] == pytest.approx(0.05) and result["met"] is True
    assert space.compare([run("before", 0.85, 0.03), run("after", 0.80, 0.04)], [])["met"] is False
    table = space.markdown(result)
    assert "| dates | after | r=8, lr=0.002 | 0.0500 (0.0600) | exact_match | 0.850 ± 0.040 | 0.050 | 0.200 |" in table
    assert "after − before = 0.050 ± 0.050" in table


def test_the_loraplus_probe_averages_each_point_over_seeds_and_says_whether_loraplus_wins() -> None:
    from benchmarks import loraplus

    def run(lr: float, ratio: float | None, seed: int, final: float) -> dict:
        return {"lr": lr, "ratio": ratio, "seed": seed, "final": final}

    runs = [run(1e-3, None, 0, 0.06), run(1e-3, None, 1, 0.08), run(1e-3, 16.0, 0, 0.20), run(1e-3, 16.0, 1, 0.10),
            run(5e-4, 16.0, 0, 0.075)]
    summary = loraplus.summarise(runs)
    assert [(row["lr"], row["ratio"], row["seeds"]) for row in summary] == [(1e-3, None, 2), (5e-4, 16.0, 1),
                                                                            (1e-3, 16.0, 2)]
    assert summary[0]["mean"] == pytest.approx(0.07) and summary[1]["stdev"] is None
    table = loraplus.markdown({"overrides": ["max_steps=30"], "runs": runs, "summary": summary})
    assert "| 0.001 | off | 0.0700 | 0.0141 | 2 |" in table and "| 0.0005 | 16 | 0.0750 | — | 1 |" in table
    assert "ratio 16: 0.0750) does not beat the best single learning rate (lr 0.001: 0.0700)" in table
    assert "seed by seed: +0.0150 (one seed: no interval" in table  # the two points share only seed 0
    # Two seeds, LoRA+ ahead on both: the means say it beats, the seeds say how surely
    runs += [run(5e-4, 16.0, 1, 0.07), run(5e-4, 16.0, 2, 0.05), run(1e-3, None, 2, 0.06)]
    table = loraplus.markdown({"overrides": [], "runs": runs, "summary": loraplus.summarise(runs)})
    assert "(lr 0.0005, ratio 16: 0.0650) beats the best single learning rate (lr 0.001: 0.0667)" in table
    assert "seed by seed: -0.0017 ± 0.0083 (standard error over 3 seeds; 95 % interval [-0.0375, +0.0342] " \
           "holds 0" in table


def test_the_parity_summary_pairs_the_arms_seed_by_seed() -> None:
    """PARITY (benchmarks/parity.py): a seed fixes the data and the initial adapter of every arm, so the arms are
    compared seed by seed: the mean difference of the final losses, its standard error and its 95 % interval
    (Student's t, not two standard errors: with 3 seeds that interval is twice as wide) decide noise or not."""
    from benchmarks import parity

    def run(seed: int, ours: float, hf: float) -> dict:  # steps as JSON gives them back: strings
        return {"seed": seed, "lora_tune": {"10": 0.5, "20": ours}, "hf_trainer": {"10": 0.6, "20": hf},
                "lora_tune_s": 1.0, "hf_trainer_s": 1.0}

    noisy = parity.summarise([run(0, 0.07, 0.06), run(1, 0.05, 0.06), run(2, 0.08, 0.06)], ("lora_tune", "hf_trainer"))
    diff = noisy["paired_difference"]["lora_tune_over_hf_mean_final"]
    assert diff["mean"] == pytest.approx(1 / 3 * 0.02) and diff["se"] == pytest.approx(0.01527525 / 3 ** 0.5)
    assert diff["interval95"] == pytest.approx([diff["mean"] - 4.303 * diff["se"], diff["mean"] + 4.303 * diff["se"]])
    assert diff["within_noise"] and noisy["ratio"]["lora_tune_over_hf_mean_final"] == pytest.approx(1.1111, abs=1e-4)
    assert noisy["met"] is False and noisy["summary"]["hf_trainer"]["stdev"] == 0
    steady = parity.summarise([run(0, 0.07, 0.06), run(1, 0.071, 0.06), run(2, 0.069, 0.06)],
                              ("lora_tune", "hf_trainer"))
    assert steady["paired_difference"]["lora_tune_over_hf_mean_final"]["within_noise"] is False
    # 3.0 standard errors from 0: beyond two, yet within the 95 % interval of 3 seeds (t = 4.303)
    wide = parity.summarise([run(0, 0.07, 0.06), run(1, 0.063, 0.06), run(2, 0.072, 0.06)], ("lora_tune", "hf_trainer"))
    diff = wide["paired_difference"]["lora_tune_over_hf_mean_final"]
    assert 2.5 < diff["mean"] / diff["se"] < 4.3 and diff["within_noise"]
    table = parity.markdown({"settings": parity.settings(parity.QUICK, [0, 1, 2]), "arms": ["lora_tune", "hf_trainer"],
                             "runs": [run(0, 0.07, 0.06)] * 3, **noisy})
    assert "| 0 | hf_trainer | 10: 0.6000, 20: 0.0600 | 0.0600 | 1.0 |" in table
    assert "final loss difference seed by seed +0.0067 ± 0.0088 (standard error over 3 seeds; 95 % interval " \
           "[-0.0313, +0.0446] holds 0" in table


@pytest.mark.parametrize("stem", ["results", "results_space", "results_parity", "results_loraplus"])
def test_each_committed_results_table_is_what_the_code_writes_from_its_json(stem: str, tmp_path: Path) -> None:
    """Every figure of a committed table is written by code: rendering the committed JSON again gives the
    committed markdown exactly (a hand edit, or a table the code no longer writes, fails here)."""
    from benchmarks import loraplus, parity, report, space

    results = json.loads((BENCHMARKS / f"{stem}.json").read_text())
    if stem == "results":
        report.write_markdown(results, tmp_path / "results.md")
        rendered = (tmp_path / "results.md").read_text()
    elif stem == "results_space":
        rendered = space.markdown(results)
    elif stem == "results_loraplus":
        rendered = loraplus.markdown(results)
    else:
        rendered = parity.markdown(results)
    assert rendered == (BENCHMARKS / f"{stem}.md").read_text()
