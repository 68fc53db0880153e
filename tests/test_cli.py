"""Bad input: one line per problem naming the key and what is accepted, exit 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_tune.sweep import cli
from tests.procs import run_bounded

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny", "wandb.mode=disabled"]


def bad_data_dir(tmp: Path) -> Path:
    folder = tmp / "bad_data"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    (folder / "validation.jsonl").write_text('{"prompt": "p", "answer": "a"}\n{"prompt": "p"}\n')
    return folder


# (overrides, the key the message must name, a fragment of what it must say is accepted)
BAD_INPUTS = [
    (["peft.r=0"], "peft.r", "integer > 0"),
    (["peft.r=-4"], "peft.r", "integer > 0"),
    (["peft.alpha=0"], "peft.alpha", "number > 0"),
    (["peft.dropout=1.5"], "peft.dropout", "[0, 1)"),
    (["quant.bits=3"], "quant.bits", "4, 8, 16"),
    (["quant.bits=32"], "quant.bits", "4, 8, 16"),
    (["quant.quant_type=int4"], "quant.quant_type", "nf4, fp4"),
    (["num_samples=0"], "num_samples", "integer >= 1"),
    (["num_samples=abc"], "num_samples", "integer >= 1"),
    (["max_steps=0"], "max_steps", "integer > 0"),
    (["train.loraplus_lr_ratio=0.5"], "train.loraplus_lr_ratio", "null or a number >= 1"),
    (["+peft.rank=4"], "peft.rank", "unknown key"),
    (["foo=1"], "foo", "unknown key"),
    (["scheduler=hyperband"], "scheduler", "asha, fifo, pbt"),
    (["search_space=nope"], "search_space", "default"),
    (["peft.target_modules=[q_proj,attn_qkv]"], "peft.target_modules", "all-linear or a list of"),
    (["peft.target_modules=[]"], "peft.target_modules", "non-empty list"),
    (["search_space.target_modules.values=[[q_proj,c_attn]]"], "search_space.target_modules.values", "q_proj"),
    (["search_space.r.values=[]"], "search_space.r.values", "non-empty list"),
    (["search_space.lr.low=0"], "search_space.lr.low", "number > 0"),
    (["search_space.lr.type=gaussian"], "search_space.lr.type", "loguniform"),
    (["search_space.r.key=peft.rank"], "search_space.r.key", "peft.*"),
    (["~search_space"], "search_space", "at least one entry"),
    (["search_alg=grid"], "search_space.lr.type", "choice, grid"),
    (["metric=accuracy"], "metric", "eval_loss"),
    (["mode=up"], "mode", "min, max"),
    (["scheduler.reduction_factor=1"], "scheduler.reduction_factor", "number > 1"),
    (["train.lr=-1"], "train.lr", "number > 0"),
    (["train.batch_size=0"], "train.batch_size", "integer > 0"),
    (["train.lr_scheduler=warm"], "train.lr_scheduler", "cosine"),
    (["data.max_seq_len=4"], "data.max_seq_len", "integer >= 16"),
    (["data.path=/nonexistent/dates"], "data.path", "a folder of split files"),
    (["data.path={bad_data}"], "data.path", "validation.jsonl:2: missing field(s) answer"),
    (["model.name_or_path=/nonexistent/model"], "model.name_or_path", "cannot read"),
    (["wandb.mode=sometimes"], "wandb.mode", "online, offline, disabled"),
    (["sweep_name=a b"], "sweep_name", "letters, digits"),
    (["peft.method=adalora", "peft.use_dora=true"], "peft.use_dora", "false with adalora"),
    (["ray.address=127.0.0.1:1", "ray.shared_fs=true"], "ray.address", "HOST:PORT of a running cluster"),
    (["ray.address=127.0.0.1:1"], "ray.storage_path", "ray.shared_fs=true"),
    (["output_dir={a_file}/runs"], "output_dir", "folder this user can create"),
    (["resume={tmp}"], "resume", "<output_dir>/<sweep_name>"),
    (["peft.r=[1"], "overrides", "override_grammar"),  # Hydra's grammar says what is accepted
]


@pytest.mark.parametrize("overrides,key,accepted", BAD_INPUTS, ids=[" ".join(o) for o, _, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(overrides, key, accepted, tmp_path, capsys) -> None:
    import ray

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    fill = {"bad_data": bad_data_dir(tmp_path), "a_file": a_file, "tmp": tmp_path}
    out = tmp_path / "runs"
    argv = [*TINY, f"output_dir={out}", *[o.format(**fill) for o in overrides]]
    if any(o.startswith("output_dir=") for o in overrides):
        argv.remove(f"output_dir={out}")
    with pytest.raises(SystemExit) as exited:
        cli(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("lora_tune: error: ") for line in lines), err
    assert any(line.startswith(f"lora_tune: error: {key}") and accepted in line for line in lines), err
    assert "Traceback" not in err
    assert not out.exists(), "a rejected config wrote files"
    assert not ray.is_initialized(), "Ray started before validation finished"


def test_every_problem_is_reported_at_once(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli([*TINY, f"output_dir={tmp_path}", "peft.r=0", "quant.bits=5", "train.lr=0", "mode=up"])
    keys = [line.split(": ")[2] for line in capsys.readouterr().err.splitlines()]
    assert {"peft.r", "quant.bits", "train.lr", "mode"} <= set(keys)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_bounded([sys.executable, "-m", "lora_tune.sweep", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)


def test_the_real_command_exits_2_without_traceback(tmp_path) -> None:
    done = run_cli(*TINY, f"output_dir={tmp_path / 'runs'}", "quant.bits=3", "scheduler.grace_period=0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.stderr.splitlines() == [
        "lora_tune: error: quant.bits: got 3; accepted: 4, 8, 16",
        "lora_tune: error: scheduler.grace_period: accepted: null or an integer > 0",
    ]
    assert not (tmp_path / "runs").exists()


def test_hydra_flags_still_work() -> None:
    done = run_cli("experiment=tiny", "peft.r=32", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    assert "name_or_path: embedded:tiny" in done.stdout and "r: 32" in done.stdout
