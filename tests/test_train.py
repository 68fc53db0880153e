"""run_trial without Ray: loss goes down, resumable states resume exactly, divergence is an error, a reused base
gives the same results, a restored state takes the trial's own hyperparameters (PBT), memory is per trial."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from lora_tune.compose import compose_config
from lora_tune.config import TrialConfig
from lora_tune.precision import resolve
from lora_tune.train import TrialDiverged, run_trial


# make gpu-check runs these on a GPU machine (pytest -m gpu); here they are skipped
def needs_gpu(test):  # noqa: ANN001, ANN201
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")(test))


def tiny_trial(**train: object) -> TrialConfig:
    cfg = compose_config(["experiment=tiny", "peft.target_modules=all-linear", "peft.r=8", "quant.bits=16",
                          "data.max_train_examples=16", "data.exact_match_examples=2", "max_steps=24",
                          "train.eval_every=8", "train.lr=0.01", "train.warmup_ratio=0"]).trial_config()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def collect(cfg: TrialConfig, **kwargs: object) -> list[dict]:
    reports: list[dict] = []
    run_trial(cfg, lambda metrics, ckpt: reports.append({**metrics, "checkpoint": ckpt}), **kwargs)
    return reports


def test_loss_goes_down_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where run_trial puts a checkpoint root of its own
    reports = collect(tiny_trial())
    assert not list(tmp_path.glob("lora_tune-*"))  # that root is gone once the trial returns: nothing left
    assert [r["step"] for r in reports] == [8, 16, 24]
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"] - 0.5
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    assert "eval_exact_match" not in reports[0] and "eval_exact_match" in reports[-1]  # eval.generate=auto: last
    for key in ("lr", "tokens_per_s", "step_time_s", "peak_mem_mb", "trainable_params", "eval_time_frac",
                "checkpoint_time_frac", "checkpoint_bytes"):
        assert key in reports[-1]
    assert 0 < reports[-1]["eval_time_frac"] < 1 and reports[-1]["checkpoint_bytes"] > 0
    auto = resolve("auto", torch.device("cpu")).name  # bf16 on a CPU with native bf16, else fp32
    assert reports[-1]["precision"] == auto and reports[-1]["workers"] == 1


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_bases_train_too(bits: int) -> None:
    cfg = tiny_trial()
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=bits), max_steps=16)
    reports = collect(cfg)
    assert reports[-1]["eval_loss"] < reports[0]["eval_loss"]


def test_resume_from_the_resumable_state_continues_exactly(tmp_path: Path) -> None:
    full = collect(tiny_trial(checkpoint_every=8), checkpoint_root=str(tmp_path / "full"))
    partial: list[dict] = []

    def stop_after_first(metrics: dict, ckpt: str | None) -> None:
        partial.append({**metrics, "checkpoint": ckpt})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny_trial(checkpoint_every=8), stop_after_first, checkpoint_root=str(tmp_path / "part"))
    state = tmp_path / "part" / "state"  # saved at step 8 (train.checkpoint_every=8)
    assert json.loads((state / "metrics.json").read_text())["step"] == 8
    report_checkpoint = Path(partial[0]["checkpoint"])
    assert (report_checkpoint / "adapter" / "adapter_model.safetensors").exists()
    assert not (report_checkpoint / "trainer_state.pt").exists()  # reports carry the adapter only
    resumed = collect(tiny_trial(checkpoint_every=8), resume_from=str(state),
                      checkpoint_root=str(tmp_path / "resumed"))
    assert [r["step"] for r in resumed] == [16, 24]
    assert resumed[0]["resumed_from_step"] == 8
    assert resumed[-1]["eval_loss"] == pytest.approx(full[-1]["eval_loss"], rel=1e-5)


def test_resumable_states_come_every_second_evaluation_by_default(tmp_path: Path) -> None:
    cfg = tiny_trial()  # eval_every 8: states at 16 (none at the last step: training ends there)
    saved: list[int] = []

    def save(folder: Path, step: int) -> int:
        saved.append(step)
        assert (folder / "trainer_state.pt").is_file() and (folder / "adapter").is_dir()
        return 1

    reports = collect(cfg, checkpoint_root=str(tmp_path), save_state=save)
    assert saved == [16] and [r["step"] for r in reports] == [8, 16, 24]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000024"]  # no temp dirs, older reports pruned


def test_full_state_in_reports_for_pbt(tmp_path: Path) -> None:
    reports = collect(tiny_trial(), checkpoint_root=str(tmp_path), full_state_in_reports=True)
    assert (Path(reports[-1]["checkpoint"]) / "trainer_state.pt").is_file()


def test_diverging_loss_is_an_error() -> None:
    cfg = tiny_trial(lr=1e4, max_grad_norm=0, precision="fp32")  # fp16 weights overflow within two steps
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, compute_dtype="fp16"))
    with pytest.raises(TrialDiverged, match="train loss is nan at step 2"):
        collect(cfg)


def test_reused_base_gives_identical_results() -> None:
    from lora_tune.model import BASE_CACHE

    cfg = tiny_trial()
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=4), max_steps=16)
    BASE_CACHE.clear()
    fresh = collect(cfg, reuse_base=False)
    first = collect(cfg)  # loads into the cache
    other = collect(dataclasses.replace(cfg, peft=dataclasses.replace(cfg.peft, r=4)))  # reuses, other adapter
    reused = collect(cfg)  # reuses the base the previous trials adapted
    assert not first[0]["base_reused"] and other[0]["base_reused"] and reused[0]["base_reused"]
    assert [r["eval_loss"] for r in reused] == [r["eval_loss"] for r in fresh] == [r["eval_loss"] for r in first]
    assert [r["train_loss"] for r in reused] == [r["train_loss"] for r in fresh]
    assert other[-1]["trainable_params"] != reused[-1]["trainable_params"]
    BASE_CACHE.release()  # strips the last trial's adapter: the cached base is the plain base again
    assert not any("lora_" in name for name, _ in BASE_CACHE.base.named_modules())


def test_a_reused_worker_switches_bases_between_bits() -> None:
    """reuse_actors: one process runs a 4-bit trial, a 16-bit one, then a 4-bit one again. Each switch loads the
    base it needs (not reused, the right kind of layers) and trains exactly as a fresh process would."""
    from bitsandbytes.nn import Linear4bit

    from lora_tune.model import BASE_CACHE

    def with_bits(bits: int) -> TrialConfig:
        cfg = dataclasses.replace(tiny_trial(eval_every=2), max_steps=4)
        return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, bits=bits))

    def quantized() -> bool:
        return any(isinstance(m, Linear4bit) for m in BASE_CACHE.base.modules())

    fresh_16 = [r["eval_loss"] for r in collect(with_bits(16), reuse_base=False)]
    BASE_CACHE.clear()
    losses = []
    for bits, is_quantized in ((4, True), (16, False), (4, True)):
        reports = collect(with_bits(bits))
        assert reports[0]["base_reused"] is False, bits
        assert quantized() is is_quantized and BASE_CACHE.key[1] == bits
        losses.append([r["eval_loss"] for r in reports])
    assert losses[1] == fresh_16 and losses[2] == losses[0]  # the first 4-bit one loaded into an empty cache
    assert losses[0] != fresh_16  # the comparison can tell the bases apart


def test_a_restored_state_takes_the_trials_own_learning_rate(tmp_path: Path) -> None:
    """PBT's exploit: another trial's state, this trial's (mutated) lr; the schedule keeps its position."""
    import shutil

    from transformers import get_scheduler

    donor: list[dict] = []

    def keep_first(metrics: dict, ckpt: str | None) -> None:  # as Tune persists a reported checkpoint
        if not donor:
            shutil.copytree(ckpt, tmp_path / "kept")
        donor.append(metrics)

    run_trial(tiny_trial(lr=0.01, lr_scheduler="cosine", warmup_ratio=0.25), keep_first,
              checkpoint_root=str(tmp_path / "a"), full_state_in_reports=True)
    checkpoint = str(tmp_path / "kept")  # step 8, a report with its full state
    saved_lr = donor[0]["lr"]
    mutated = tiny_trial(lr=0.002, lr_scheduler="cosine", warmup_ratio=0.25)
    reports = collect(mutated, resume_from=checkpoint, checkpoint_root=str(tmp_path / "b"))
    import torch

    schedule = get_scheduler("cosine", torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.002),
                             num_warmup_steps=6, num_training_steps=24)
    expected = []
    for _ in range(24):
        schedule.optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr()[0])
    assert reports[0]["step"] == 16 and reports[0]["lr"] == pytest.approx(expected[15])
    assert reports[-1]["lr"] == pytest.approx(expected[23])
    assert saved_lr == pytest.approx(expected[7] * 5)  # the donor ran at 0.01 = 5 x 0.002


def test_peak_memory_is_this_trials_not_the_process_lifetimes() -> None:
    import numpy as np

    from lora_tune import memory

    before = memory.peak_mb(memory.torch.device("cpu"))
    big = np.ones(2**28 // 8 * 6, dtype=np.float64)  # 1.5 GB touched, then freed
    del big
    lifetime = memory.peak_mb(memory.torch.device("cpu"))
    assert lifetime > before + 1000
    reports = collect(dataclasses.replace(tiny_trial(), max_steps=8))
    assert reports[-1]["peak_mem_mb"] < lifetime - 1000


HEAP_LEFT_BEHIND = """
import re
from pathlib import Path
import torch
from lora_tune.memory import reset_peak
def anon_mb():
    return int(re.search(r"RssAnon:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB in heap chunks (under glibc's mmap threshold)
keep = blocks[-1]
del blocks  # freed below a live chunk: glibc keeps these pages resident until malloc_trim
before = anon_mb()
reset_peak(torch.device("cpu"))  # what run_trial does first
print(before - anon_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon is read from Linux's /proc")
def test_a_trial_start_hands_the_previous_trials_freed_heap_back() -> None:
    """A reused Ray trial process grew ~0.6 GB a SmolLM2 trial (to 4.9 GB after 8) until each trial's start
    trimmed the heap; a fresh process shows the trim returning freed-but-resident pages."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HEAP_LEFT_BEHIND], capture_output=True, text=True, check=True)
    assert float(done.stdout) > 100  # MB handed back


def test_a_state_saved_without_loss_scaling_resumes_under_fp16(tmp_path: Path) -> None:
    """train.precision=auto is bf16 on an A100 and fp16 on a V100: a trial retried on another node type resumes a
    state saved without a loss scaler (an empty scaler state) into an enabled one, which must start afresh (torch
    raises on an empty state) and train on."""
    def stop_after_first(metrics: dict, ckpt: str | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny_trial(checkpoint_every=8, precision="fp32"), stop_after_first,
                  checkpoint_root=str(tmp_path / "part"))
    resumed = collect(tiny_trial(checkpoint_every=8, precision="fp16"), resume_from=str(tmp_path / "part" / "state"),
                      checkpoint_root=str(tmp_path / "resumed"))
    assert [r["step"] for r in resumed] == [16, 24] and resumed[0]["resumed_from_step"] == 8
    assert all(torch.isfinite(torch.tensor(r["eval_loss"])) for r in resumed)


def test_an_fp16_step_skipped_for_overflow_leaves_adalora_importance_finite() -> None:
    """GradScaler skips a step whose gradients overflowed (inf/NaN); AdaLoRA's importance scores, which read the
    gradients after the step, must not take them in (one such step would poison its rank allocation). An overflow
    is forced with an initial loss scale near fp32's maximum."""
    from lora_tune.distributed import Workers
    from lora_tune.train import build_state, train_step

    cfg = compose_config(["experiment=tiny", "peft.method=adalora", "peft.r=4", "search_space=rank", "quant.bits=16",
                          "data.max_train_examples=16", "max_steps=24", "train.max_grad_norm=0",
                          "train.precision=fp16"]).trial_config()
    state = build_state(cfg, Workers(), reuse_base=False)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    train_step(state, cfg, 1)
    assert state.scaler.get_scale() < 3e38  # the step was skipped
    importance = state.model.base_model.rankallocator.ipt
    assert all(torch.isfinite(v).all() for v in importance.values()), "inf/NaN importance scores"


def test_a_trial_given_a_gpu_that_sees_none_refuses_to_train_on_the_cpu() -> None:
    """resources.gpus_per_trial > 0 and no CUDA device in the process (a broken driver, a CPU-only torch in the
    image): the trial fails at once, naming what it sees, instead of training on the CPU unnoticed."""
    if torch.cuda.is_available():
        pytest.skip("needs a process without CUDA")
    with pytest.raises(RuntimeError, match=r"resources.gpus_per_trial=0.5: this process sees no CUDA device "
                                           r"\(CUDA_VISIBLE_DEVICES=.*refusing to train on the CPU"):
        run_trial(tiny_trial(), lambda metrics, ckpt: None, gpus=0.5)
    assert collect(dataclasses.replace(tiny_trial(), max_steps=8), gpus=0.0)[-1]["step"] == 8


@needs_gpu
def test_a_fractional_gpu_share_caps_what_torch_may_allocate() -> None:
    from lora_tune.memory import claim_gpu

    device = torch.device("cuda", 0)
    claim_gpu(0.25, device)
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.3), dtype=torch.uint8, device=device)
        torch.empty(int(total * 0.2), dtype=torch.uint8, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


@pytest.mark.parametrize("name,kind", [("auto", "torch.optim.adamw.AdamW"), ("adamw", "torch.optim.adamw.AdamW"),
                                       ("adamw_8bit", "bitsandbytes.optim.adamw.AdamW8bit"),
                                       ("paged_adamw", "bitsandbytes.optim.adamw.PagedAdamW")])
def test_the_optimizer_is_the_one_asked_for_and_auto_is_not_paged(name: str, kind: str) -> None:
    from lora_tune.train import make_optimizer

    cfg = tiny_trial(optimizer=name)
    param = torch.nn.Parameter(torch.zeros(4, 4))
    optimizer = make_optimizer(cfg, None, [param], torch.device("cpu"))
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == kind


def test_an_8bit_adamw_trial_trains() -> None:
    reports = collect(dataclasses.replace(tiny_trial(optimizer="adamw_8bit"), max_steps=16))
    assert reports[-1]["train_loss"] < reports[0]["train_loss"] or reports[-1]["eval_loss"] < reports[0]["eval_loss"]


def test_peak_memory_says_what_it_measures_and_against_what() -> None:
    from lora_tune.memory import peak_report

    found = peak_report(torch.device("cpu"))
    assert found["peak_mem_measure"] == "process_peak_rss"
    assert 0 < found["peak_mem_mb"] < found["device_mem_mb"]
    reports = collect(dataclasses.replace(tiny_trial(), max_steps=8))
    assert reports[-1]["peak_mem_measure"] == "process_peak_rss" and reports[-1]["device_mem_mb"] > 0


@needs_gpu
def test_gpu_peak_memory_is_the_allocators_with_its_reserved_peak() -> None:
    from lora_tune.memory import peak_report, reset_peak

    device = torch.device("cuda", 0)
    reset_peak(device)
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    found = peak_report(device)
    del block
    assert found["peak_mem_measure"] == "cuda_max_allocated" and found["peak_mem_mb"] >= 256
    assert found["peak_reserved_mb"] >= found["peak_mem_mb"] and found["device_mem_mb"] > found["peak_reserved_mb"]


def test_a_gpu_share_leaves_room_for_the_cuda_context_outside_the_allocator() -> None:
    """set_per_process_memory_fraction caps torch's allocator only; the CUDA context comes on top. The plan counts
    it inside the trial's share, so the allocator gets the share less the context."""
    from lora_tune.memory import CUDA_CONTEXT_GB, GB, allocator_fraction

    assert allocator_fraction(0.25, 80 * GB) == pytest.approx(0.25 - CUDA_CONTEXT_GB / 80)
    assert allocator_fraction(0.25, 80 * GB) * 80 + CUDA_CONTEXT_GB == pytest.approx(0.25 * 80)
    assert allocator_fraction(0.01, 8 * GB) > 0  # never zero: a tiny share still lets torch allocate


def test_an_optimizer_step_sees_batch_size_examples_in_each_of_grad_accum_micro_batches() -> None:
    """train.batch_size is the micro-batch (over all workers), train.grad_accum the micro-batches of a step."""
    from lora_tune.distributed import Workers
    from lora_tune.train import build_state, step_batches

    cfg = tiny_trial(batch_size=3, grad_accum=2)
    state = build_state(cfg, Workers(), reuse_base=False)
    rows = [batch["input_ids"].shape[0] for batch, _ in step_batches(state, cfg, 1)]
    assert rows == [3, 3]


def test_grad_accum_gives_the_gradients_of_one_batch_of_the_same_examples() -> None:
    """batch_size=4 x grad_accum=2 takes the examples batch_size=8 takes (plain order) and, the loss normalised
    over the step's answer tokens (not averaged per micro-batch), hands the optimizer the same gradients."""
    from lora_tune.data import IGNORE_INDEX
    from lora_tune.distributed import Workers
    from lora_tune.train import build_state, train_step

    def gradients_of_step_one(batch_size: int, grad_accum: int) -> dict[str, torch.Tensor]:
        cfg = tiny_trial(batch_size=batch_size, grad_accum=grad_accum, precision="fp32", max_grad_norm=0.0)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, group_by_length=False),
                                  peft=dataclasses.replace(cfg.peft, dropout=0.0))
        state = build_state(cfg, Workers(), reuse_base=False)
        for i, example in enumerate(state.data.train):  # answers of unequal length (the dates' are all alike)
            answer = [j for j, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
            for j in answer[: i % 4]:
                example["labels"][j] = IGNORE_INDEX
        seen: dict[str, torch.Tensor] = {}
        params = {n: p for n, p in state.trainable.named_parameters() if p.requires_grad}
        state.optimizer.register_step_pre_hook(
            lambda *_: seen.update({n: p.grad.detach().clone() for n, p in params.items()}))
        train_step(state, cfg, 1)
        return seen

    whole, accumulated = gradients_of_step_one(8, 1), gradients_of_step_one(4, 2)
    assert whole.keys() == accumulated.keys() and any(g.abs().sum() > 0 for g in whole.values())
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    half = gradients_of_step_one(4, 1)  # half the examples: other gradients, which the tolerance tells apart
    assert any(not torch.allclose(half[n], g, rtol=1e-4, atol=1e-7) for n, g in whole.items())


def test_data_group_by_length_false_takes_batches_in_a_plain_seeded_random_order() -> None:
    """data.group_by_length=false (HF Trainer's default order): each batch is the next slice of the epoch's seeded
    permutation; the default groups them by length instead."""
    from lora_tune.data import batch_indices
    from lora_tune.distributed import Workers
    from lora_tune.train import build_state, step_batches

    cfg = tiny_trial(batch_size=4)
    state = build_state(cfg, Workers(), reuse_base=False)
    lengths = [len(e["input_ids"]) for e in state.data.train]

    def trial_widths(config: TrialConfig) -> list[int]:
        return [batch["input_ids"].shape[1] for step in (1, 2, 3) for batch, _ in step_batches(state, config, step)]

    def widths(group: bool) -> list[int]:  # the padded width of each batch: its longest example
        return [max(lengths[i] for i in batch_indices(step, 4, lengths, cfg.seed, group_by_length=group))
                for step in (1, 2, 3)]

    plain = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, group_by_length=False))
    assert trial_widths(plain) == widths(False) and trial_widths(cfg) == widths(True)
    assert widths(False) != widths(True)


def test_loraplus_trains_lora_b_at_its_ratio_of_the_learning_rate_and_a_pbt_restore_follows_the_new_one() -> None:
    from lora_tune.distributed import Workers
    from lora_tune.train import apply_hyperparameters, build_state, train_step

    cfg = tiny_trial(lr=1e-3, loraplus_lr_ratio=16.0, weight_decay=0.01)

    def peak_lrs(state) -> dict[str, set[float]]:
        names = {id(p): n for n, p in state.model.named_parameters()}
        found: dict[str, set[float]] = {"lora_A": set(), "lora_B": set()}
        for group in state.optimizer.param_groups:
            for param in group["params"]:
                part = "lora_B" if "lora_B" in names[id(param)] else "lora_A"
                found[part].add(round(group["initial_lr"], 9))
        return found

    state = build_state(cfg, Workers(), reuse_base=False)
    assert peak_lrs(state) == {"lora_A": {1e-3}, "lora_B": {16e-3}}
    assert math.isfinite(train_step(state, cfg, 1)[0])
    mutated = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=2e-3, loraplus_lr_ratio=4.0))
    apply_hyperparameters(state, mutated)
    assert peak_lrs(state) == {"lora_A": {2e-3}, "lora_B": {8e-3}}
    used = [lr for lr, group in zip(state.scheduler.base_lrs, state.optimizer.param_groups) if group["params"]]
    assert sorted(set(used)) == [2e-3, 8e-3]  # the schedule runs from the new peaks


@pytest.mark.parametrize(("generate", "evaluations_with_metrics"), [("every", [8, 16, 24]), ("final", [24]),
                                                                   ("never", [])])
def test_eval_generate_says_at_which_evaluations_a_trial_generates(generate: str,
                                                                   evaluations_with_metrics: list[int]) -> None:
    cfg = tiny_trial()
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, generate=generate))
    reports = collect(cfg)
    assert [r["step"] for r in reports] == [8, 16, 24]
    assert [r["step"] for r in reports if "eval_exact_match" in r] == evaluations_with_metrics
