"""PARITY: does a lora_tune trial train as well as HF `Trainer` on the same thing? (issue 34)

For each seed, the same TrialConfig is trained twice: by `run_trial` and by HF `Trainer` on an identical PEFT model
(the same base, the adapter initialised from the same seed, so both start from the same weights), the same
tokenized train and eval rows, global batch (train.batch_size x train.grad_accum), AdamW, learning rate, schedule,
warm-up, weight decay, gradient clipping and precision. Both are scored by lora_tune's own eval_loss (token-weighted
mean over the answer tokens) on the same eval rows at the same steps. What is left different is what each does by
itself: the order of the batches (lora_tune groups by length, HF samples at random) and how each normalises a
batch's loss. Two more arms separate the batch order from the training loop: lora_tune_random is run_trial with
data.group_by_length=false (a plain seeded random order, as HF's), and hf_same_order is HF Trainer fed run_trial's
own batches, in its order (a sampler of data.batch_indices): what is left between lora_tune and hf_same_order is
the loop itself (and the dropout draws). Writes OUT/results_parity.json and OUT/results_parity.md; every figure
written by code.

    python -m benchmarks.parity                      # SmolLM2-135M, the issue's config, 3 seeds (~40 min on 2 cores)
    python -m benchmarks.parity --quick --out /tmp/p # the tiny model, 2 seeds, seconds (the slow test runs this)
    python -m benchmarks.parity --from-json benchmarks/results_parity.json   # re-summarise, no training

Seeds are paired (a seed fixes the data and the initial adapter of every arm), so besides the ratio of the means
each comparison reports the seed-by-seed difference of the final losses with its standard error and 95 % interval
(Student's t): a gap whose interval holds 0 is the seeds' noise, not a difference between the loops.

A measurement, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import load, paired, paired_text, timed

# The config: r=8, alpha=16, all-linear, 16-bit, lr 2.58e-3, 30 steps on the dates task.
FULL = ["peft.r=8", "peft.alpha=16", "peft.target_modules=all-linear", "quant.bits=16", "train.lr=2.58e-3",
        "max_steps=30", "train.eval_every=10", "data.eval_examples=200"]
QUICK = ["experiment=tiny", "quant.bits=16", "max_steps=12", "train.eval_every=4", "data.max_train_examples=64"]
ARMS = ("lora_tune", "lora_tune_random", "hf_trainer", "hf_same_order")


def trial_config(overrides: list[str], seed: int) -> Any:
    from lora_tune.compose import compose_config

    return compose_config([*overrides, f"seed={seed}", "wandb.mode=disabled"]).trial_config()


def lora_tune_losses(cfg: Any, data: Any) -> dict[int, float]:
    """step -> eval_loss of `run_trial` (a fresh base: nothing cached from the other arm)."""
    from lora_tune.train import run_trial

    losses: dict[int, float] = {}
    run_trial(cfg, lambda metrics, _checkpoint: losses.__setitem__(int(metrics["step"]), metrics["eval_loss"]),
              data=data, reuse_base=False, num_threads=2)
    return losses


def run_trial_order(cfg: Any, data: Any) -> list[int]:
    """The train examples in the order run_trial takes them, every micro-batch of every step (data.batch_indices):
    HF's dataloader cuts this list into the same batches."""
    from lora_tune.data import batch_indices

    lengths = [len(e["input_ids"]) for e in data.train]
    grouped = cfg.data.group_by_length and not cfg.data.packing
    return [i for micro in range(1, cfg.max_steps * cfg.train.grad_accum + 1)
            for i in batch_indices(micro, cfg.train.batch_size, lengths, cfg.seed, group_by_length=grouped)]


def hf_losses(cfg: Any, data: Any, out: Path, order: list[int] | None = None) -> dict[int, float]:
    """step -> eval_loss of HF Trainer on the same model, data and optimisation, scored by lora_tune's eval_loss;
    `order`: the examples in this order (else HF's own random sampler)."""
    import torch
    from transformers import Trainer, TrainerCallback

    from benchmarks.hf_search import training_args
    from lora_tune import model as models
    from lora_tune import precision as precisions
    from lora_tune.data import collate
    from lora_tune.evaluate import eval_loss
    from lora_tune.loss import SupervisedLoss
    from lora_tune.train import with_adapter

    torch.set_num_threads(2)
    precision = precisions.resolve(cfg.train.precision, torch.device("cpu"))  # as training_args' bf16
    base = models.load_base(cfg.model.name_or_path, cfg.quant, precision, torch.device("cpu"))
    model = with_adapter(base, cfg, None)  # seeded as run_trial seeds it: the same initial adapter
    pad_id = models.load_tokenizer(cfg.model.name_or_path).pad_token_id
    scorer = SupervisedLoss(model, precision)
    losses: dict[int, float] = {}

    class Score(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % cfg.train.eval_every == 0 or state.global_step == cfg.max_steps:
                losses[state.global_step] = eval_loss(scorer, data.eval, pad_id, cfg.train.eval_batch_size)

    # P4's arguments (the same optimisation as the sweep's trials) without its in-Trainer evaluation
    args = dataclasses.replace(training_args(cfg, out), eval_strategy="no")
    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return order if order is not None else super()._get_train_sampler(*args, **kwargs)

    InOrder(model=model, args=args, train_dataset=data.train, callbacks=[Score()],
            data_collator=functools.partial(collate, pad_id=pad_id)).train()
    return losses


def one_seed(overrides: list[str], seed: int, out: Path, arms_run: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """The arms on the same tokenized rows for one seed."""
    from lora_tune.data import prepare_task_data, with_chat_template
    from lora_tune.model import load_tokenizer

    cfg = trial_config(overrides, seed)
    random_order = trial_config([*overrides, "data.group_by_length=false"], seed)
    tokenizer = with_chat_template(load_tokenizer(cfg.model.name_or_path), cfg.data)
    data = prepare_task_data(tokenizer, cfg.data, cfg.seed)
    arms = {"lora_tune": lambda: lora_tune_losses(cfg, data),
            "lora_tune_random": lambda: lora_tune_losses(random_order, data),
            "hf_trainer": lambda: hf_losses(cfg, data, out / f"hf-{seed}"),
            "hf_same_order": lambda: hf_losses(cfg, data, out / f"hf-ordered-{seed}", run_trial_order(cfg, data))}
    run: dict[str, Any] = {"seed": seed}
    for arm in arms_run:
        run[arm], seconds = timed(arms[arm])
        run[f"{arm}_s"] = round(seconds, 1)
    return run


# (results key, numerator arm, denominator arm) of the mean final eval losses compared
RATIOS = (("lora_tune_over_hf_mean_final", "lora_tune", "hf_trainer"),
          ("lora_tune_random_over_hf_mean_final", "lora_tune_random", "hf_trainer"),
          ("lora_tune_over_hf_same_order_mean_final", "lora_tune", "hf_same_order"))


def compare(overrides: list[str], seeds: list[int], out: Path, arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    runs = [one_seed(overrides, seed, out, arms) for seed in seeds]
    return {"settings": settings(overrides, seeds), "arms": list(arms), "runs": runs, **summarise(runs, arms),
            "load_avg": load()}


def settings(overrides: list[str], seeds: list[int]) -> dict[str, Any]:
    cfg = trial_config(overrides, seeds[0])
    return {"overrides": overrides, "seeds": seeds, "model": cfg.model.name_or_path, "max_steps": cfg.max_steps,
            "global_batch": cfg.train.batch_size * cfg.train.grad_accum, "eval_rows": cfg.data.eval_examples,
            "precision": cfg.train.precision}


def final_loss(losses: dict[Any, float]) -> float:
    """The eval loss at the last step (steps are ints here and strings once read back from JSON)."""
    return losses[max(losses, key=int)]


def paired_difference(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Arm a's final eval loss minus arm b's, seed by seed (common.paired)."""
    return paired([final_loss(run[a]) - final_loss(run[b]) for run in runs])


def summarise(runs: list[dict[str, Any]], arms: tuple[str, ...]) -> dict[str, Any]:
    """Everything computed from the runs' losses: per-arm mean and spread, the ratios, the paired differences."""
    finals = {arm: [final_loss(run[arm]) for run in runs] for arm in arms}
    summary = {arm: {"mean": statistics.mean(v), "stdev": statistics.stdev(v) if len(v) > 1 else None}
               for arm, v in finals.items()}
    present = [(key, a, b) for key, a, b in RATIOS if a in summary and b in summary]
    ratios = {key: round(summary[a]["mean"] / summary[b]["mean"], 4) for key, a, b in present}
    differences = {key: paired_difference(runs, a, b) for key, a, b in present}
    gaps = [abs(run["lora_tune"][step] - run["hf_same_order"][step]) for run in runs
            if "lora_tune" in run and "hf_same_order" in run for step in run["lora_tune"]]
    ratio = ratios.get("lora_tune_over_hf_mean_final")
    return {"what": "final eval loss (lora_tune's eval_loss) of run_trial vs HF Trainer on the same model, data "
                    "and optimisation, per seed",
            "final": finals, "summary": summary, "ratio": ratios, "paired_difference": differences,
            "same_order_max_gap": max(gaps) if gaps else None,
            "target": "lora_tune's mean final eval loss within 10 % of HF's (ratio <= 1.10)",
            "met": ratio <= 1.10 if ratio is not None else None}


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"# PARITY: run_trial vs HF Trainer ({s['model']}, {s['max_steps']} steps, global batch "
             f"{s['global_batch']}, {s['eval_rows']} eval rows, precision {s['precision']})", "",
             "| seed | arm | eval loss by step | final | wall s |", "|---|---|---|---|---|"]
    for run in result["runs"]:
        for arm in result["arms"]:
            by_step = ", ".join(f"{step}: {loss:.4f}" for step, loss in sorted(run[arm].items(),
                                                                             key=lambda item: int(item[0])))
            lines.append(f"| {run['seed']} | {arm} | {by_step} | {final_loss(run[arm]):.4f} | "
                         f"{run[arm + '_s']} |")
    summary = result["summary"]
    lines += ["", "| arm | mean final | stdev |", "|---|---|---|"]
    lines += [f"| {arm} | {v['mean']:.4f} | {'—' if v['stdev'] is None else round(v['stdev'], 4)} |"
              for arm, v in summary.items()]
    ratios, lines = result["ratio"], [*lines, ""]
    labels = {"lora_tune_over_hf_mean_final": "lora_tune / HF mean final",
              "lora_tune_random_over_hf_mean_final": "run_trial with HF's random batch order "
                                                     "(data.group_by_length=false) / HF",
              "lora_tune_over_hf_same_order_mean_final": "lora_tune / HF fed run_trial's batches"}
    lines += [f"- {labels[key]}: {value:.3f}{paired_line(result['paired_difference'][key])}"
              for key, value in ratios.items()]
    if result["met"] is not None:
        lines.append(f"- target {result['target']}: {'met' if result['met'] else 'NOT met'}")
    if result["same_order_max_gap"] is not None:
        lines.append(f"- largest gap between lora_tune and HF fed its batches at any evaluation: "
                     f"{result['same_order_max_gap']:.4f}")
    return "\n".join(lines) + "\n"


def paired_line(diff: dict[str, Any]) -> str:
    return "" if diff["se"] is None else f"; final loss difference seed by seed {paired_text(diff)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 seeds (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--from-json", type=Path, help="no training: summarise the runs of this results_parity.json "
                        "again with today's code (its settings, runs and load kept) and write both files")
    parser.add_argument("overrides", nargs="*", help="more config overrides for every arm, e.g. peft.dropout=0")
    args = parser.parse_args()
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.from_json:
        old = json.loads(args.from_json.read_text())
        result = {**old, **summarise(old["runs"], tuple(old["arms"]))}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = compare([*(QUICK if args.quick else FULL), *args.overrides], seeds, Path(tmp),
                             tuple(args.arms))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results_parity.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results_parity.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
