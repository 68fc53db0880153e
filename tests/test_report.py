"""`python -m lora_tune.report`: sorted table, PNG plots and report.md from a real tiny sweep (with the
default-LoRA baseline trained beside the trials and scored on the test split)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from lora_tune.report import main as report_main
from tests.conftest import REPO, with_space
from tests.procs import run_bounded

PLOTS = ("curves.png", "metric_vs_hyperparameters.png", "memory_vs_metric.png")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 trials one at a time (ASHA stops the lr=1e-6 ones), then the baseline; eval.baseline=true."""
    from lora_tune.compose import compose_config
    from lora_tune.sweep import run_sweep

    out = tmp_path_factory.mktemp("report")
    cfg = compose_config(["experiment=tiny", f"output_dir={out}", "sweep_name=rep", "wandb.mode=offline",
                          "num_samples=2", "search_alg.max_concurrent=1", "data.max_train_examples=16",
                          "eval.baseline=true"])
    cfg = with_space(cfg, lr={"key": "train.lr", "type": "grid", "values": [3e-2, 1e-6]},
                     bits={"key": "quant.bits", "type": "choice", "values": [4, 16]})
    run_sweep(dataclasses.replace(cfg, verbose=0))
    return out / "rep"


def test_summary_compares_base_default_lora_and_winner(sweep_dir: Path) -> None:
    test = json.loads((sweep_dir / "best" / "summary.json").read_text())["test"]
    for key in ("base_exact_match", "default_lora_exact_match", "winner_exact_match"):
        assert 0 <= test[key] <= 1
    for key in ("base_loss", "default_lora_loss", "winner_loss"):
        assert test[key] > 0
    assert test["winner_loss"] < test["base_loss"]  # lr 3e-2 learns on the test split too
    assert test["default_lora_steps"] == 12  # the sweep's max_steps: the same budget as every trial
    assert test["default_lora"] == {"peft.r": 8, "peft.alpha": 16, "peft.target_modules": "qv",
                                    "peft.use_dora": False, "peft.use_rslora": False, "quant.bits": 16}


def test_the_baseline_is_a_row_of_its_own_never_the_winner(sweep_dir: Path) -> None:
    rows = json.loads((sweep_dir / "results.json").read_text())
    (baseline,) = [r for r in rows if r["role"] == "baseline"]
    assert baseline["trial_id"] == "baseline" and baseline["steps"] == 12 and not baseline["stopped_early"]
    assert (baseline["bits"], baseline["lr"]) == (16, 1e-3) and baseline["eval_loss"] > 0  # tiny's train.lr
    summary = json.loads((sweep_dir / "best" / "summary.json").read_text())
    assert summary["trial_id"] != "baseline"
    assert (sweep_dir / "baseline" / "adapter" / "adapter_model.safetensors").is_file()


def test_report_prints_the_sorted_table_and_writes_plots(sweep_dir: Path, capsys: pytest.CaptureFixture) -> None:
    report_main([str(sweep_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split()
    losses = [float(line.split()[header.index("eval_loss")]) for line in lines[1:-1]]
    assert len(losses) == 5 and losses == sorted(losses)  # 4 trials and the baseline
    assert lines[-1] == f"lora_tune: report {sweep_dir / 'report.md'} (plots next to it)"
    import matplotlib.image

    for name in PLOTS:
        image = matplotlib.image.imread(sweep_dir / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image.std() > 0.05  # something was drawn


def test_report_md_embeds_the_plots_and_the_evaluation(sweep_dir: Path) -> None:
    report_main([str(sweep_dir)])
    text = (sweep_dir / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name})" in text
    summary = json.loads((sweep_dir / "best" / "summary.json").read_text())
    assert "| default LoRA baseline (r=8, alpha=16, qv, 16-bit, same steps) |" in text
    assert f"winner ({summary['trial_id']})" in text and "| model | loss | exact_match |" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model | loss |"))
    names = [cell.strip() for cell in header.strip("|").split("|")][1:]
    for role, label in (("base", "base model ("), ("winner", f"winner ({summary['trial_id']})")):
        row = next(line for line in lines if line.startswith(f"| {label}"))
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        for name, cell in zip(names, cells, strict=True):  # each figure is summary.json's, to 4 significant digits
            assert float(cell) == pytest.approx(summary["test"][f"{role}_{name}"], rel=1e-3, abs=1e-12), (role, name)
    assert text.count("| TERMINATED |") == 5


def test_curves_come_from_ray_trial_dirs_and_mark_asha_stops(sweep_dir: Path) -> None:
    from lora_tune.plots import curves_figure
    from lora_tune.results import trial_histories
    from lora_tune.storage import Store

    rows = [r for r in json.loads((sweep_dir / "results.json").read_text()) if r["role"] == "trial"]
    histories = trial_histories(Store.at(sweep_dir))
    assert set(histories) == {r["trial_id"] for r in rows}
    for row in rows:
        assert histories[row["trial_id"]][-1]["step"] == row["steps"]
    stopped = [r for r in rows if r["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    fig = curves_figure(histories, rows, "eval_loss", None)
    marks = [tuple(point) for c in fig.axes[0].collections for point in c.get_offsets()]
    expected = sorted((r["steps"], histories[r["trial_id"]][-1]["eval_loss"]) for r in stopped)
    assert [m[0] for m in sorted(marks)] == [e[0] for e in expected]
    assert [m[1] for m in sorted(marks)] == pytest.approx([e[1] for e in expected])
    assert "stopped by ASHA" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


@pytest.mark.parametrize("target", ["/nonexistent/sweep", "tests"])
def test_bad_sweep_dir_is_a_one_line_error(target: str) -> None:
    done = run_bounded([sys.executable, "-m", "lora_tune.report", target], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("lora_tune: error: ") and "accepted: a finished sweep such as" in done.stderr


def test_report_md_shows_the_confirmation_over_seeds_and_whether_the_winner_changed() -> None:
    from lora_tune.post_sweep import summary_line
    from lora_tune.report import confirmation_section

    confirmation = {"top_k": 2, "seeds": [0, 1], "metric": "eval_loss", "search_best": "a", "changed_winner": True,
                    "configs": [{"trial_id": "b", "confirm_seeds": "0 1", "confirm_values": "0.12 0.11",
                                 "confirm_mean": 0.115, "confirm_std": 0.00707},
                                {"trial_id": "a", "confirm_seeds": "0 1", "confirm_values": "0.1 0.2",
                                 "confirm_mean": 0.15, "confirm_std": 0.0707}]}
    text = "\n".join(confirmation_section({"confirmation": confirmation}))
    assert "seeds [1] (the search used 0)" in text and "replaced the search's best trial `a`" in text
    assert "| b | 0 1 | 0.12 0.11 | 0.115 |" in text and text.index("| b |") < text.index("| a |")
    assert confirmation_section({"trial_id": "a"}) == []  # no confirmation, no section
    summary = {"trial_id": "b", "metric": "eval_loss", "value": 0.12, "adapter": "x", "confirmation": confirmation,
               "eval_metrics": {"eval_loss_se": 0.01}, "test": {"headline": "exact_match", "winner_exact_match": 0.5}}
    line = summary_line(summary, "x")
    assert "eval_loss=0.1200±0.0100 (seeds 0,1: mean 0.1150±0.0071) test exact match 0.500" in line
