"""`python -m lora_tune.export` merges the winner into the unquantized base; `lora_tune.generate` answers with it.

The sweep dir is laid out as `sweep.finish` writes it (best/adapter + best/summary.json) from adapters trained
by `run_trial` on the tiny model: on a 16-bit base, and on a 4-bit (QLoRA) base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lora_tune import export, generate
from lora_tune.compose import compose_config
from lora_tune.config import QuantConfig
from lora_tune.storage import Store
from lora_tune.train import run_trial
from tests.conftest import REPO
from tests.procs import run_bounded

PROMPT = "Convert this date to ISO format (YYYY-MM-DD): May 1, 2001"


def make_sweep_dir(root: Path, bits: int) -> Path:
    """A finished-sweep layout holding an adapter trained for 16 steps at `bits`."""
    cfg = compose_config(["experiment=tiny", f"quant.bits={bits}", "peft.target_modules=all-linear", "max_steps=16",
                          "train.eval_every=16", "train.lr=0.02", "train.warmup_ratio=0",
                          "data.max_train_examples=16", "data.exact_match_examples=0"]).trial_config()
    reports: list[tuple[dict, str]] = []
    run_trial(cfg, lambda m, c: reports.append((m, c)), checkpoint_root=str(root / "ckpt"))
    sweep = root / "sweep"
    Store.at(sweep).put_dir(Path(reports[-1][1]) / "adapter", "best/adapter")  # as post_sweep writes it
    summary = {"trial_id": "t0", "metric": "eval_loss", "mode": "min", "value": reports[-1][0]["eval_loss"],
               "base_model": "embedded:tiny", "bits": bits, "config": cfg.to_dict(),
               "adapter": str(sweep / "best" / "adapter")}
    (sweep / "best" / "summary.json").write_text(json.dumps(summary))
    return sweep


@pytest.fixture(scope="module", params=[16, 4], ids=["lora-16bit", "qlora-4bit"])
def sweep_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sweep_dir(tmp_path_factory.mktemp(f"export{request.param}"), request.param)


def logits(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.float()


def reference(sweep_dir: Path, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(base + adapter logits, base logits) with the unquantized base in `dtype`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_tune.embedded import resolve_model_path
    from lora_tune.model import load_tokenizer

    tokenizer = load_tokenizer("embedded:tiny")
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("embedded:tiny"), dtype=dtype)
    base_logits = logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(sweep_dir / "best" / "adapter")).eval()
    return logits(tuned, tokenizer), base_logits, tokenizer


def test_merged_fp32_logits_match_base_plus_adapter(sweep_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    target = export.export(str(sweep_dir), tmp_path / "merged", dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(target)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    expected, base_only, tokenizer = reference(sweep_dir, torch.float32)
    got = logits(merged, tokenizer)
    assert (expected - base_only).abs().max() > 1e-2  # the adapter changes the model...
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # ...and the merge keeps that change


def test_default_export_is_bf16_plain_checkpoint_under_best(sweep_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(export.export(str(sweep_dir)))
    assert target == sweep_dir / "best" / "merged"
    assert (target / "MANIFEST.json").is_file()  # written whole
    config = json.loads((target / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert not list(target.parent.glob(".merged-*")), "temp folder left behind"
    merged = AutoModelForCausalLM.from_pretrained(target)
    assert next(merged.parameters()).dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(target)
    expected, base_only, _ = reference(sweep_dir, torch.bfloat16)
    got = logits(merged, tokenizer)
    err = (got - expected).abs().max()
    assert err < 0.1 * (expected - base_only).abs().max()  # bf16 rounding only, far below the adapter's effect
    provenance = json.loads((target / "lora_tune_merge.json").read_text())
    assert provenance["trained_bits"] == json.loads((sweep_dir / "best" / "summary.json").read_text())["bits"]


def greedy(model: torch.nn.Module, tokenizer: object, system: str | None, new_tokens: int) -> str:
    """Greedy decoding written out by hand: chat template, argmax token by token, no generate()."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def test_generate_answers_with_base_plus_adapter(sweep_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from peft import PeftModel

    from lora_tune.model import load_base, load_tokenizer

    generate.main([str(sweep_dir), PROMPT, "--max-new-tokens", "6"])
    tuned_answer = capsys.readouterr().out.strip()
    generate.main([str(sweep_dir), PROMPT, "--max-new-tokens", "6", "--base-only"])
    base_answer = capsys.readouterr().out.strip()
    summary = json.loads((sweep_dir / "best" / "summary.json").read_text())
    tokenizer = load_tokenizer("embedded:tiny")
    base = load_base("embedded:tiny", QuantConfig(bits=summary["bits"]))
    system = summary["config"]["data"]["system_prompt"]  # as in training
    assert base_answer == greedy(base.eval(), tokenizer, system, 6)
    tuned = PeftModel.from_pretrained(base, str(sweep_dir / "best" / "adapter")).eval()
    assert tuned_answer == greedy(tuned, tokenizer, system, 6)
    assert tuned_answer and tuned_answer != base_answer  # the adapter is what answers


@pytest.mark.parametrize("module", ["lora_tune.export", "lora_tune.generate"])
def test_bad_sweep_dir_is_a_one_line_error(module: str, tmp_path: Path) -> None:
    args = [str(tmp_path)] + (["hello"] if module.endswith("generate") else [])
    done = run_bounded([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"lora_tune: error: {tmp_path} is not a sweep; accepted: a finished sweep such as "
                                   "runs/<sweep_name> or s3://bucket/prefix/<sweep_name>")
