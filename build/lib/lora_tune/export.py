"""Merge a sweep's winning adapter into a 16-bit copy of its base and save a standard HF checkpoint.

    python -m lora_tune.export runs/<sweep>                      # -> runs/<sweep>/best/merged/ (bf16)
    python -m lora_tune.export runs/<sweep> --dtype fp32 --out /tmp/merged
    python -m lora_tune.export s3://bucket/prefix/<sweep>        # -> s3://.../<sweep>/best/merged/

The base is always loaded unquantized, whatever `quant.bits` the winner trained on: a QLoRA (4-bit) or 8-bit
winner's adapter is merged into the 16-bit base weights, never into quantized ones (merging into NF4 would
round the update away). `PeftModel.from_pretrained` + `merge_and_unload` fold the adapter in; the result
loads with `AutoModelForCausalLM.from_pretrained(dir)` and needs neither PEFT nor bitsandbytes.
The folder is written whole (a local temp dir renamed into place; in a bucket, its manifest last).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from lora_tune.config import COMPUTE_DTYPES, QuantConfig, TrialConfig
from lora_tune.errors import ConfigError, fail
from lora_tune.report import SweepDirError, open_sweep, read_summary
from lora_tune.storage import StorageError, Store

DTYPES = [d for d in COMPUTE_DTYPES if d != "auto"]
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}  # torch's names work too


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        fail(f"{message}; usage: {usage}")


def winner(location: str) -> tuple[dict[str, Any], TrialConfig, Path]:
    """The winner's summary, trial config and a local copy of its adapter; raises SweepDirError."""
    store = open_sweep(location)
    summary = read_summary(store)
    if not summary.get("base_model"):
        raise SweepDirError(f"{store.uri}/best/summary.json names no base_model")
    try:
        cfg = TrialConfig.from_dict(summary.get("config") or {})
        adapter = store.local_dir("best/adapter")
    except ConfigError as exc:
        raise SweepDirError(f"{store.uri}/best/summary.json has an invalid config ({exc.problems[0]})") from None
    except StorageError as exc:
        raise SweepDirError(str(exc)) from None
    if not (adapter / "adapter_config.json").is_file():
        raise SweepDirError(f"{store.uri} has no best/adapter/adapter_config.json; accepted: a finished sweep")
    return summary, cfg, adapter


def merged_model(cfg: TrialConfig, adapter: Path, dtype: str) -> tuple[Any, Any]:
    """(unquantized base in `dtype` + adapter, merged: a plain transformers model; its tokenizer)."""
    from lora_tune.model import load_with_adapter

    unquantized = dataclasses.replace(cfg, quant=QuantConfig(bits=16, compute_dtype=dtype))
    model, tokenizer = load_with_adapter(unquantized, str(adapter))
    return model.merge_and_unload(), tokenizer


def export(location: str, out: Path | None = None, dtype: str = "bf16") -> str:
    """Write the merged checkpoint + tokenizer (default <sweep>/best/merged); returns where."""
    summary, cfg, adapter = winner(location)
    model, tokenizer = merged_model(cfg, adapter, dtype)
    with tempfile.TemporaryDirectory(prefix="lora_tune-merged-") as tmp:
        folder = Path(tmp) / "merged"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        provenance = {"base_model": summary["base_model"], "adapter": summary.get("adapter"),
                      "trial_id": summary["trial_id"], "trained_bits": summary.get("bits"), "merged_dtype": dtype,
                      "note": "adapter merged into the unquantized base weights"}
        (folder / "lora_tune_merge.json").write_text(json.dumps(provenance, indent=2) + "\n")
        os.chmod(folder, 0o755)
        if out is not None:
            Store.at(str(out.parent)).put_dir(folder, out.name)
            return str(out)
        store = open_sweep(location)
        store.put_dir(folder, "best/merged")
        return f"{store.uri}/best/merged"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lora_tune.export", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep: runs/<sweep_name> or s3://bucket/prefix/<sweep_name>")
    parser.add_argument("--out", type=Path, default=None, help="local target folder (default <sweep>/best/merged)")
    parser.add_argument("--dtype", choices=[*DTYPES, *DTYPE_ALIASES], default="bf16", help="dtype of the weights")
    args = parser.parse_args(argv)
    dtype = DTYPE_ALIASES.get(args.dtype, args.dtype)
    try:
        target = export(args.sweep, args.out.expanduser().resolve() if args.out else None, dtype)
    except SweepDirError as exc:
        fail(str(exc))
    print(f"lora_tune: merged checkpoint ({dtype}) in {target}")


if __name__ == "__main__":
    main()
