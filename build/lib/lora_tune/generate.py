"""Answer a prompt with a sweep's winner: base (in the precision it trained on) + best adapter, greedy.

    python -m lora_tune.generate runs/<sweep> "Convert this date to ISO format (YYYY-MM-DD): May 1, 2001"
    python -m lora_tune.generate runs/<sweep> "..." --max-new-tokens 64 --base-only   # compare with the base
    python -m lora_tune.generate s3://bucket/prefix/<sweep> "..."

The prompt goes through the model's chat template with the sweep's data.system_prompt, like training did.
"""

from __future__ import annotations

from lora_tune.errors import fail
from lora_tune.export import OneLineParser, winner
from lora_tune.report import SweepDirError


def answer(location: str, prompt: str, max_new_tokens: int | None = None, base_only: bool = False) -> str:
    """The greedy answer to `prompt` (chat template applied); raises SweepDirError for a bad sweep."""
    from lora_tune.evaluate import answer_messages
    from lora_tune.model import load_with_adapter

    _, cfg, adapter = winner(location)
    model, tokenizer = load_with_adapter(cfg, None if base_only else str(adapter))
    system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    conversation = [*system, {"role": "user", "content": prompt}]
    return answer_messages(model, tokenizer, [conversation], max_new_tokens or cfg.data.max_new_tokens)[0]


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lora_tune.generate", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep: runs/<sweep_name> or s3://bucket/prefix/<sweep_name>")
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the sweep's data.max_new_tokens")
    parser.add_argument("--base-only", action="store_true", help="answer with the base model, no adapter")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens: got {args.max_new_tokens}; accepted: an integer >= 1")
    try:
        print(answer(args.sweep, args.prompt, args.max_new_tokens, args.base_only).strip())
    except SweepDirError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
