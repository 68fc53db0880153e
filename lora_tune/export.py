"""Merge a sweep's winning adapter into a 16-bit copy of its base and save a standard HF checkpoint.

    python -m lora_tune.export runs/<sweep>                      # -> runs/<sweep>/best/merged/ (bfloat16)
    python -m lora_tune.export runs/<sweep> --dtype float32 --out /tmp/merged

The base is always loaded unquantized, whatever `quant.bits` the winner trained on: a QLoRA (4-bit) or 8-bit
winner's adapter is merged into the 16-bit base weights, never into quantized ones (merging into NF4 would
round the update away). `PeftModel.from_pretrained` + `merge_and_unload` fold the adapter in; the result
loads with `AutoModelForCausalLM.from_pretrained(dir)` and needs neither PEFT nor bitsandbytes.
The folder is written atomically (temp dir + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from lora_tune.atomic import atomic_directory
from lora_tune.report import SweepDirError, read_summary

DTYPES = ("bfloat16", "float16", "float32")


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        print(f"lora_tune: error: {message}; usage: {usage}", file=sys.stderr)
        raise SystemExit(2)


def winner(sweep_dir: Path) -> tuple[dict[str, Any], Path]:
    """The winner's summary and adapter folder; raises SweepDirError."""
    summary = read_summary(sweep_dir)
    adapter = sweep_dir / "best" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SweepDirError(f"{sweep_dir} has no best/adapter/adapter_config.json; accepted: a finished sweep dir")
    if not summary.get("base_model"):
        raise SweepDirError(f"{sweep_dir}/best/summary.json names no base_model")
    return summary, adapter


def merged_model(base_model: str, adapter: Path, dtype: str, trust_remote_code: bool = False) -> Any:
    """Unquantized base in `dtype` + adapter, merged (a plain transformers model)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_tune.embedded import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_model), dtype=getattr(torch, dtype),
                                                device_map={"": "cpu"}, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def export(sweep_dir: Path, out: Path | None = None, dtype: str = "bfloat16") -> Path:
    """Write the merged checkpoint + tokenizer (default <sweep>/best/merged); returns its folder."""
    from lora_tune.model import load_tokenizer

    summary, adapter = winner(sweep_dir)
    trust = bool(summary.get("config", {}).get("model", {}).get("trust_remote_code", False))
    model = merged_model(summary["base_model"], adapter, dtype, trust)
    target = out or sweep_dir / "best" / "merged"
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(summary["base_model"]).save_pretrained(tmp)
        provenance = {"base_model": summary["base_model"], "adapter": str(adapter), "trial_id": summary["trial_id"],
                      "trained_bits": summary.get("bits"), "merged_dtype": dtype,
                      "note": "adapter merged into the unquantized base weights"}
        (tmp / "lora_tune_merge.json").write_text(json.dumps(provenance, indent=2) + "\n")
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lora_tune.export", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep dir, e.g. runs/<sweep_name>")
    parser.add_argument("--out", type=Path, default=None, help="target folder (default <sweep_dir>/best/merged)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the saved weights")
    args = parser.parse_args(argv)
    try:
        target = export(args.sweep_dir.expanduser(), args.out, args.dtype)
    except SweepDirError as exc:
        print(f"lora_tune: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"lora_tune: merged checkpoint ({args.dtype}) in {target}")


if __name__ == "__main__":
    main()
