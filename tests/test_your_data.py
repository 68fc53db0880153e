"""Bring your own data, end to end in tiny sweeps: every format, a single file, a folder, packing, a metric other
than exact match, and a GPT-2-architecture base without a chat template swept by the default (symbolic) space."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.sweep import run_sweep
from tests.procs import run_bounded

pytestmark = pytest.mark.slow
SMALL = ["experiment=tiny", "wandb.mode=disabled", "verbose=0", "num_samples=1", "max_steps=4", "train.eval_every=2",
         "scheduler=fifo", "data.max_train_examples=32", "data.eval_examples=8", "data.exact_match_examples=4",
         "data.test_examples=6"]


def rows_of(sweep: Path) -> list[dict]:
    return [r for r in json.loads((sweep / "results.json").read_text()) if r["role"] == "trial"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_single_jsonl_file_from_the_command_line(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mine.jsonl", [{"question": f"What is {i} plus {i}?", "reply": str(2 * i)}
                                                 for i in range(60)])
    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", *SMALL, f"data.path={data}",
                        "data.prompt_field=question", "data.answer_field=reply", "sweep_name=file"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [line for line in done.stderr.splitlines() if line.startswith("lora_tune: ")]
    assert f"lora_tune: data.format=auto: {data} reads as prompt_answer" in notes
    assert f"lora_tune: no test split in {data}: carved 6 rows from train (data.test_size=0.1)" in notes
    assert f"lora_tune: no validation split in {data}: carved 6 rows from train (data.eval_size=0.1)" in notes
    assert done.stdout.strip().splitlines()[-1].startswith("lora_tune: winner ")
    summary = json.loads((tmp_path / "runs" / "file" / "best" / "summary.json").read_text())
    assert summary["test"]["examples"] == 6


def test_multi_turn_messages_scored_by_token_f1(tmp_path: Path) -> None:
    cfg = compose_config([*SMALL, "data=shopping", "data.max_seq_len=256", "eval.metrics=[token_f1,rouge_l]",
                          "metric=eval_token_f1", "mode=max", f"output_dir={tmp_path}", "sweep_name=chat"])
    summary = run_sweep(cfg)
    (row,) = rows_of(tmp_path / "chat")
    assert 0 <= row["eval_token_f1"] <= 1 and 0 <= row["eval_rouge_l"] <= 1 and "eval_exact_match" not in row
    test = summary["test"]
    assert test["headline"] == "token_f1"
    assert {"base_token_f1", "winner_token_f1", "base_rouge_l", "winner_rouge_l"} <= set(test)
    assert summary["metric"] == "eval_token_f1" and summary["mode"] == "max"


def test_alpaca_parquet_folder(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "Repeat the word.", "input": w, "output": w} for w in ["apple", "pear", "plum"] * 20]
    folder = tmp_path / "data"
    folder.mkdir()
    for split, part in (("train", rows[:40]), ("validation", rows[40:50]), ("test", rows[50:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"{split}.parquet")
    cfg = compose_config([*SMALL, f"data.path={folder}", "data.system_prompt=null", f"output_dir={tmp_path}",
                          "sweep_name=alpaca", "eval.metrics=[exact_match,contains]"])
    summary = run_sweep(cfg)
    (row,) = rows_of(tmp_path / "alpaca")
    assert row["status"] == "TERMINATED" and row["eval_contains"] is not None
    assert summary["test"]["examples"] == 6  # data.test_examples of the 10 test rows


def test_plain_text_with_packing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "notes" / "train.jsonl", [{"text": f"Note {i}: the meeting is on day {i}."}
                                                            for i in range(80)])
    cfg = compose_config([*SMALL, f"data.path={data}", "data.packing=true", f"output_dir={tmp_path}",
                          "sweep_name=text", "data.max_seq_len=64"])
    summary = run_sweep(cfg)  # data.format=auto finds text: no generation metric
    (row,) = rows_of(tmp_path / "text")
    assert row["eval_loss"] > 0 and "eval_exact_match" not in row
    assert summary["test"]["headline"] == "loss" and summary["test"]["winner_loss"] > 0


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 (Conv1D layers, c_attn / c_proj / c_fc names) with SmolLM2's tokenizer minus its chat
    template: another architecture, and a base model without a chat template."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from lora_tune.embedded import resolve_model_path

    out = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:tiny"))
    tokenizer.chat_template = None
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def test_another_architecture_without_a_chat_template_sweeps_the_default_space(tiny_gpt2: Path,
                                                                               tmp_path: Path) -> None:
    cfg = compose_config([*SMALL, f"model.name_or_path={tiny_gpt2}", "search_space=default", "num_samples=3",
                          f"output_dir={tmp_path}", "sweep_name=gpt2", "quant.bits=16"])
    assert cfg.search_space["target_modules"].values == ["attention", "all-linear"]  # unedited
    run_sweep(cfg)
    rows = rows_of(tmp_path / "gpt2")
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" for r in rows), rows
    config = json.loads((tmp_path / "gpt2" / "best" / "adapter" / "adapter_config.json").read_text())
    summary = json.loads((tmp_path / "gpt2" / "best" / "summary.json").read_text())
    gpt2_linear = {"attention": ("c_attn", "attn.c_proj"),
                   "all-linear": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")}
    wanted = gpt2_linear[summary["hyperparameters"]["target_modules"]]  # the symbolic set, resolved for GPT-2
    targets = config["target_modules"]
    assert targets and all(name.endswith(wanted) for name in targets), targets
    assert {suffix for suffix in wanted for name in targets if name.endswith(suffix)} == set(wanted), targets
