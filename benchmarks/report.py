"""benchmarks/results.md from the results dict of `benchmarks.run`: one table row per model and comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.notes import NOTES, explain, observations, sweep_phases

TITLES = {"P1": "P1 ASHA vs FIFO", "P2": "P2 first step, reused vs reloaded base",
          "P3": "P3 quickstart orchestration overhead", "P4": "P4 vs HF hyperparameter_search(ray)",
          "P5": "P5 parameter memory", "PACK": "packing tokens/s", "CKPT": "checkpoint bytes per trial",
          "TPS": "tokens/s per trial"}


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def measured(key: str, sec: dict[str, Any]) -> tuple[str, str]:
    """(what was measured, the ratio) as short table cells."""
    raw, r = sec.get("raw", {}), sec.get("ratio") or {}
    if key == "P1":
        f, a = raw["fifo"], raw["asha"]
        return (f"FIFO {f['wall_s']:.0f} s, best {fmt(f['best_eval_loss'], 4)}; ASHA {a['wall_s']:.0f} s, best "
                f"{fmt(a['best_eval_loss'], 4)} ({a['stopped_early']} stopped early)",
                f"time {fmt(r['time_asha_over_fifo'])}x, loss {fmt(r['loss_asha_over_fifo'], 4)}x")
    if key == "P2":
        cells = [f"{name}: {fmt(v['reused_median_s'])} s vs {fmt(v['reloaded_median_s'])} s" for name, v in raw.items()]
        return "; ".join(cells), ", ".join(f"{name} {fmt(v['ratio'])}x" for name, v in raw.items())
    if key == "P3":
        ideal = raw["ideal"]
        return (f"quickstart {raw['sweep']['wall_s']:.0f} s vs the same work bare {ideal['ideal_s']:.0f} s "
                f"({ideal['trials']} trials, {ideal['steps']} steps)",
                f"{fmt(r['sweep_over_ideal'])}x (trials phase / bare pool: {fmt(r['trials_phase_over_pool'])}x)")
    if key == "PACK":
        return (f"padded {fmt(raw['padded']['tokens_per_s'])} tokens/s, packed {fmt(raw['packed']['tokens_per_s'])}",
                f"{fmt(r['packed_over_padded_tokens_per_s'])}x")
    if key == "CKPT":
        mb = raw["mb"]
        return f"before {mb['before']} MB, after {mb['after']} MB per trial", f"{fmt(r['after_over_before'])}x"
    if key == "P4":
        hf, ours = raw["hf"], raw["lora_tune"]
        return (f"to loss {fmt(raw['target_loss'], 4)}: lora_tune {fmt(raw['lora_tune_time_to_target_s'])} s, HF "
                f"{fmt(raw['hf_time_to_target_s'])} s; walls {ours['wall_s']:.0f} s vs {hf['wall_s']:.0f} s; best "
                f"{fmt(ours['best_eval_loss'], 4)} vs {fmt(hf['best_eval_loss'], 4)}",
                f"HF/lora_tune {fmt(r['hf_over_lora_tune_time_to_target'])}x "
                f"(wall {fmt(r['hf_over_lora_tune_wall'])}x)")
    if key == "P5":
        mb = raw["mb"]
        text = "; ".join(f"{d}: " + " / ".join(f"{mb[d][b]} MB" for b in ("4", "8", "16")) + " (4/8/16-bit)"
                         for d in mb)
        return text, f"4/16: bf16 {fmt(r['bf16_4bit_over_16bit'])}x, fp32 {fmt(r['fp32_4bit_over_16bit'])}x"
    med = raw["median_tokens_per_s_by_bits"]
    return ("median tokens/s " + ", ".join(f"{b}-bit {fmt(v)}" for b, v in med.items())
            + f"; time evaluating {fmt(raw['median_eval_time_frac'])}, checkpointing "
            f"{fmt(raw['median_checkpoint_time_frac'])} (median shares); {sec['mfu_note']}", "—")


def met_cell(sec: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**", None: "—"}[sec.get("met")]


def table(report: dict[str, Any]) -> list[str]:
    lines = ["| model | comparison | measured | ratio | target | met |", "|---|---|---|---|---|---|"]
    for model, result in report["models"].items():
        for key, sec in result["comparisons"].items():
            if "error" in sec:
                lines.append(f"| {model} | {TITLES[key]} | could not run: {sec['error']} | — | — | — |")
                continue
            what, ratio = measured(key, sec)
            lines.append(f"| {model} | {TITLES[key]} | {what} | {ratio} | {sec.get('target') or '—'} | "
                         f"{met_cell(sec)} |")
    return lines


def settings_lines(report: dict[str, Any]) -> list[str]:
    lines = ["## Settings", ""]
    for model, result in report["models"].items():
        s = result["settings"]
        lines.append(f"- **{model}**: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    m = report["machine"]
    auto = f"; `train.precision=auto` ran in {m['auto_precision']}" if m.get("auto_precision") else ""
    lines += ["", f"Machine: {m['cpus']} CPUs ({m['platform']}), GPU: {m.get('gpu') or 'none'}; "
                  f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, ray {m['ray']}, "
                  f"bitsandbytes {m['bitsandbytes']}{auto}. "
                  f"Load average (1/5/15 min) at start {report['load_avg_start']}, at end {report['load_avg_end']} "
                  "(other jobs share the 2 cores: timings are noisy). Whole run: "
                  f"{report['wall_s']:.0f} s{' (quick settings: not a measurement)' if report['quick'] else ''}."]
    for later in report.get("later_runs", []):
        lines.append(f"{', '.join(later['only'])} come from a later run ({later['generated_at']}, "
                     f"{later['wall_s']:.0f} s, load average at start {later['load_avg_start']}, "
                     f"at end {later['load_avg_end']}): "
                     f"{later['why']}. Each ratio is still measured side by side within one run.")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = ["# lora_tune benchmarks", "", "Written by `make bench` (`python -m benchmarks.run`); raw numbers in "
             "`results.json`. Ratios compare two things measured side by side in the same run.", ""]
    lines += table(report) + [""]
    phases = sweep_phases(report)
    if phases:
        lines += ["## Where each sweep's time went", ""] + [f"- {line}" for line in phases] + [""]
    lines += settings_lines(report) + ["", "## What each comparison does", ""]
    lines += [f"- **{key}**: {text}" for key, text in NOTES.items()]
    seen = observations(report)
    if seen:
        lines += ["", "## What the comparisons without a target show", ""] + [f"- {line}" for line in seen]
    findings = explain(report)
    if findings:
        lines += ["", "## Targets missed, and why", ""] + [f"- {line}" for line in findings]
    path.write_text("\n".join(lines) + "\n")
