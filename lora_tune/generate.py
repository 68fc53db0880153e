"""Answer a prompt with a sweep's winner: base (in the precision it trained on) + best adapter, greedy.

    python -m lora_tune.generate runs/<sweep> "Convert this date to ISO format (YYYY-MM-DD): May 1, 2001"
    python -m lora_tune.generate runs/<sweep> "..." --max-new-tokens 64 --base-only   # compare with the base

The prompt goes through the model's chat template with the sweep's data.system_prompt, like training did.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lora_tune.export import OneLineParser, winner
from lora_tune.report import SweepDirError


def load_winner(summary: dict[str, Any], adapter: Path, base_only: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer): the base quantized as in the winning trial, with the adapter unless base_only."""
    from peft import PeftModel

    from lora_tune import model as models
    from lora_tune.config import TrialConfig

    cfg = TrialConfig.from_dict(summary["config"])
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    base = models.load_base(cfg.model.name_or_path, cfg.quant, cfg.model.trust_remote_code)
    return (base if base_only else PeftModel.from_pretrained(base, str(adapter))), tokenizer


def answer(sweep_dir: Path, prompt: str, max_new_tokens: int | None = None, base_only: bool = False) -> str:
    """The greedy answer to `prompt` (chat template applied); raises SweepDirError for a bad sweep dir."""
    from lora_tune.config import ConfigError, TrialConfig
    from lora_tune.evaluate import generate_answers

    summary, adapter = winner(sweep_dir)
    try:
        data = TrialConfig.from_dict(summary.get("config") or {}).data
    except ConfigError as exc:
        raise SweepDirError(f"{sweep_dir}/best/summary.json has an invalid config ({exc.problems[0]})") from None
    model, tokenizer = load_winner(summary, adapter, base_only)
    return generate_answers(model, tokenizer, [prompt], data.system_prompt, max_new_tokens or data.max_new_tokens)[0]


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lora_tune.generate", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep dir, e.g. runs/<sweep_name>")
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the sweep's data.max_new_tokens")
    parser.add_argument("--base-only", action="store_true", help="answer with the base model, no adapter")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens: got {args.max_new_tokens}; accepted: an integer >= 1")
    try:
        print(answer(args.sweep_dir.expanduser(), args.prompt, args.max_new_tokens, args.base_only).strip())
    except SweepDirError as exc:
        print(f"lora_tune: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
