"""dry_run=true: the plan (space, trials, trainable parameters, memory, fit) without weights, Ray or a hub."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_tune.compose import compose_config
from lora_tune.config import ConfigError, SweepConfig
from lora_tune.plan import GB, make_plan, weight_bytes
from lora_tune.space import decode_value
from lora_tune.sweep import run_sweep
from tests.conftest import REPO, with_space
from tests.procs import run_bounded

RECIPES = sorted((REPO / "sweeps").glob("*.sh"))


def llama8b(*overrides: str) -> SweepConfig:
    return compose_config(["model=llama3_8b", "resources=gpu", "resources.gpu_memory_gb=24", "search_space=large_model",
                           "data.max_seq_len=512", *overrides])


def test_dry_run_prints_the_plan_and_starts_nothing(tiny_cfg: SweepConfig, capsys: pytest.CaptureFixture) -> None:
    import ray

    cfg = with_space(tiny_cfg, r={"key": "peft.r", "type": "choice", "values": [4, 8]},
                     bits={"key": "quant.bits", "type": "grid", "values": [4, 16]},
                     lr={"key": "train.lr", "type": "loguniform", "low": 1e-4, "high": 1e-2})
    cfg = dataclasses.replace(cfg, dry_run=True, num_samples=3)
    assert run_sweep(cfg) is None
    out = capsys.readouterr().out
    assert "peft.r" in out and "quant.bits" in out and "loguniform [0.0001, 0.01]" in out
    assert "trials: 6 (num_samples=3 x 2 grid combinations)" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("4 ", "16 "))]
    assert sorted((int(r[0]), int(r[1])) for r in rows) == [(4, 4), (4, 8), (16, 4), (16, 8)]
    assert out.strip().splitlines()[-1] == "lora_tune: dry run: 6 trials, all 4 trial classes fit; nothing was started"
    assert not ray.is_initialized()
    assert not (Path(cfg.output_dir) / cfg.sweep_name).exists()


def test_trainable_params_are_what_peft_trains(tiny_cfg: SweepConfig) -> None:
    """The meta-device count equals the count on the real loaded model with the real adapter."""
    from lora_tune.model import attach_adapter, count_parameters, load_base

    cfg = with_space(tiny_cfg, targets={"key": "peft.target_modules", "type": "choice",
                                        "values": [["q_proj", "v_proj"], "all-linear"]},
                     dora={"key": "peft.use_dora", "type": "choice", "values": [False, True]})
    plan = make_plan(dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=16)))
    assert len(plan.classes) == 4
    for trial_class in plan.classes:
        trial = cfg.trial_config({"peft.target_modules": decode_value(trial_class.target_modules),
                                  "peft.use_dora": trial_class.variant == "dora", "quant.bits": 16})
        model = attach_adapter(load_base(trial.model.name_or_path, trial.quant), trial.peft, 10)
        assert trial_class.trainable_params == count_parameters(model)[0]


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_weight_estimate_matches_the_loaded_footprint(bits: int, tiny_cfg: SweepConfig) -> None:
    from lora_tune.model import load_base, meta_model
    from lora_tune.plan import compute_bytes, load_architecture

    trial = tiny_cfg.trial_config({"quant.bits": bits})
    base = load_base(trial.model.name_or_path, trial.quant)  # in train.precision=auto as this CPU resolves it
    config, _ = load_architecture(trial.model)
    estimate = weight_bytes(meta_model(config), trial, dtype_bytes=compute_bytes(trial, "cpu"))
    assert estimate == pytest.approx(base.get_memory_footprint(), rel=0.05)


def test_the_planned_compute_dtype_follows_train_precision(tiny_cfg: SweepConfig) -> None:
    from lora_tune.plan import compute_bytes

    def planned(device: str, **keys: str) -> int:
        return compute_bytes(tiny_cfg.trial_config({f"train.{k}" if k == "precision" else f"quant.{k}": v
                                                    for k, v in keys.items()}), device)

    assert planned("cuda", precision="fp32") == 4 and planned("cuda", precision="auto") == 2
    assert planned("cpu", precision="bf16") == 2 and planned("cpu", precision="fp32") == 4
    assert planned("cpu", precision="fp32", compute_dtype="fp16") == 2  # quant.compute_dtype wins


def test_an_8b_model_is_planned_from_its_shipped_config_alone() -> None:
    """No hub and no weights: the architecture comes from lora_tune/model_configs/llama3_8b.json."""
    plan = make_plan(llama8b("model.gradient_checkpointing=true"))
    assert plan.architecture == "LlamaForCausalLM" and plan.total_params == 8_030_261_248
    assert plan.config_source.endswith("model_configs/llama3_8b.json")
    assert {c.bits for c in plan.classes} == {4} and len(plan.classes) == 6
    r16_all = next(c for c in plan.classes if c.r == 16 and c.target_modules == "all-linear")
    assert r16_all.trainable_params == 41_943_040  # 32 layers x r(in+out) summed over the 7 projections
    assert all(c.fits for c in plan.classes)
    assert all(5 * GB < c.weight_bytes < 9 * GB for c in plan.classes)  # 4-bit body + fp32 embeddings/head


def test_a_16bit_8b_without_checkpointing_does_not_fit_24gb() -> None:
    plan = make_plan(llama8b("quant.bits=16", "model.gradient_checkpointing=false"))
    assert plan.classes and not any(c.fits for c in plan.classes)
    assert all(c.weight_bytes > 15 * GB for c in plan.classes)


def test_fit_is_unknown_without_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine's GPU gives the budget")
    plan = make_plan(compose_config(["model=llama3_8b", "resources=gpu", "search_space=large_model"]))
    assert plan.classes and all(c.fits is None for c in plan.classes)
    assert "set resources.gpu_memory_gb" in plan.budget_note


def test_unknown_config_path_is_one_line_error() -> None:
    with pytest.raises(ConfigError) as info:
        make_plan(compose_config(["model=llama3_8b", "model.config_path=nope"]))
    assert len(info.value.problems) == 1 and "model.config_path: 'nope'" in info.value.problems[0]
    assert "llama3_8b" in info.value.problems[0]


def test_dry_run_rejects_targets_the_model_lacks(tiny_cfg: SweepConfig) -> None:
    cfg = with_space(tiny_cfg, targets={"key": "peft.target_modules", "type": "choice", "values": [["c_attn"]]})
    with pytest.raises(ConfigError, match="search_space.targets.values: the model has no module"):
        make_plan(cfg)


def run_recipe(recipe: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "RAY_ADDRESS": ""}
    return run_bounded(["bash", str(recipe), "dry_run=true", *overrides], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300)


def test_cluster_recipe_fits_24gb_gpus_by_dry_run() -> None:
    done = run_recipe(REPO / "sweeps" / "cluster_llama3_8b.sh")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "meta-llama/Meta-Llama-3-8B-Instruct (LlamaForCausalLM, 8,030.3M parameters" in done.stdout
    assert "budget 24.0 GB (1 x 24 GB GPU)" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith("all 6 trial classes fit; nothing was started")


def test_the_8b_recipe_at_16_bits_fits_four_24gb_gpus_with_fsdp_not_with_ddp() -> None:
    shared = ("quant.bits=16", "resources.workers_per_trial=4")
    fsdp = run_recipe(REPO / "sweeps" / "cluster_llama3_8b.sh", *shared, "resources.strategy=fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    assert "4 workers per trial (fsdp, strict_pack: one node with CPU 16, GPU 4); memory per worker" in fsdp.stdout
    assert fsdp.stdout.strip().splitlines()[-1].endswith("all 6 trial classes fit; nothing was started")
    ddp = run_recipe(REPO / "sweeps" / "cluster_llama3_8b.sh", *shared, "resources.strategy=ddp")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "trial classes do NOT fit" in ddp.stdout.strip().splitlines()[-1]
    rows = {line.split()[2]: line.split() for line in ddp.stdout.splitlines()
            if line.strip().startswith("16 ") and "lora" in line}
    weights_ddp = {line.split()[1] + line.split()[2]: float(line.split()[5]) for line in ddp.stdout.splitlines()
                   if line.strip().startswith("16 ") and "lora" in line}
    weights_fsdp = {line.split()[1] + line.split()[2]: float(line.split()[5]) for line in fsdp.stdout.splitlines()
                    if line.strip().startswith("16 ") and "lora" in line}
    assert rows and all(weights_fsdp[k] < weights_ddp[k] / 2 for k in weights_ddp)  # sharded 4 ways


def test_workers_split_the_batch_and_fsdp_shards_the_weights() -> None:
    from lora_tune.model import meta_model
    from lora_tune.plan import load_architecture, worker_memory

    cfg = llama8b("quant.bits=16")
    trial = cfg.trial_config()
    config, _ = load_architecture(trial.model)
    model = meta_model(config)
    one = worker_memory(config, model, trial, "cuda", cfg.resources)
    ddp = worker_memory(config, model, trial, "cuda",
                        dataclasses.replace(cfg.resources, workers_per_trial=4, strategy="ddp"))
    fsdp = worker_memory(config, model, trial, "cuda",
                         dataclasses.replace(cfg.resources, workers_per_trial=4, strategy="fsdp"))
    assert ddp["activations"] < one["activations"] and ddp["weights"] == one["weights"]
    assert ddp["total"] > one["total"] - (one["activations"] - ddp["activations"]) * 1.1  # + buckets, comms
    assert fsdp["optimizer"] == pytest.approx(one["optimizer"] / 4)
    # a quarter of the weights plus the two decoder layers being gathered (32 layers: 2/32 of the base)
    assert fsdp["weights"] == pytest.approx(one["weights"] / 4 + one["weights"] * 2 / 32, rel=0.02)


def test_the_plan_counts_the_reference_task_and_the_winners_scoring(tiny_cfg: SweepConfig) -> None:
    plan = make_plan(dataclasses.replace(tiny_cfg, eval=dataclasses.replace(tiny_cfg.eval, baseline=True)))
    names = [extra.name for extra in plan.extras]
    assert names == ["reference: base model scored on the test split (16-bit)",
                     "reference: default-LoRA baseline trial (16-bit, then scored)",
                     "the winner scored on the test split"]
    assert all(extra.fits and extra.total_bytes > 0 for extra in plan.extras)


def test_every_recipe_states_its_purpose() -> None:
    assert {r.stem for r in RECIPES} >= {"quickstart", "qlora_vs_lora", "target_modules", "rank_alpha",
                                         "cluster_llama3_8b"}
    for recipe in RECIPES:
        lines = recipe.read_text().splitlines()
        assert lines[1].startswith("# Purpose: ") and "-m lora_tune.sweep" in recipe.read_text()
        assert os.access(recipe, os.X_OK)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.stem != "cluster_llama3_8b"], ids=lambda r: r.stem)
def test_every_recipe_composes_and_plans(recipe: Path) -> None:
    done = run_recipe(recipe)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing was started" in done.stdout.strip().splitlines()[-1]


def test_fsdp_trials_fit_in_their_shards_because_no_gpu_loads_the_whole_base() -> None:
    """FSDP shards the 16-bit 8B base (15 GB) over 4 workers and loads it straight into the shards (rank 0 reads it
    into host memory): every trial class fits 16 GB GPUs, while the sweep's single-worker scorings of the whole base
    do not, and the plan says where the base is read."""
    shared = ("quant.bits=16", "resources.workers_per_trial=4", "resources.strategy=fsdp")
    small = run_recipe(REPO / "sweeps" / "cluster_llama3_8b.sh", *shared, "resources.gpu_memory_gb=16")
    assert small.returncode == 0, small.stderr[-2000:]
    assert "rank 0 reads the base into host memory, 15.0 GB; each GPU only ever holds its shards" in small.stdout
    assert small.stdout.strip().splitlines()[-1].endswith("all 6 trial classes fit (3 other piece(s) of work do NOT "
                                                        "fit); nothing was started")
    rows = [line.split() for line in small.stdout.splitlines() if line.strip().startswith("16 ")]
    assert len(rows) == 6 and all(float(r[5]) < 5 and 7 < float(r[-2]) < 16 for r in rows)  # shards, total
