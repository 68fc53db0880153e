"""Can a trial's workers be placed? The rule (placement.py) on hand-made nodes, and a local sweep whose Ray can
never hold a trial stops at once with one line instead of waiting forever."""

from __future__ import annotations

import sys
from pathlib import Path

from lora_tune.compose import compose_config
from lora_tune.placement import requirement, unplaceable
from tests.procs import run_bounded

REPO = Path(__file__).resolve().parents[1]
ONE_GPU_NODES = [{"CPU": 8.0, "GPU": 1.0}] * 4


def resources(*overrides: str):
    return compose_config(["experiment=tiny", *overrides]).resources


def test_strict_pack_needs_one_node_that_holds_every_worker() -> None:
    res = resources("resources=multi_gpu", "resources.placement=strict_pack")
    reason = unplaceable(res, ONE_GPU_NODES)
    assert reason.startswith("resources.placement=strict_pack puts a trial's 2 workers on one node, which needs "
                             "CPU 8, GPU 2; the largest node has CPU 8, GPU 1")
    assert unplaceable(res, [*ONE_GPU_NODES, {"CPU": 16.0, "GPU": 2.0}]) is None
    assert requirement(res) == "one node with CPU 8, GPU 2"


def test_pack_and_spread_may_use_several_nodes_but_not_more_than_there_are() -> None:
    for placement in ("pack", "spread"):
        res = resources("resources=multi_gpu", f"resources.placement={placement}", "resources.workers_per_trial=4")
        assert unplaceable(res, ONE_GPU_NODES) is None
        assert "the 3 node(s) hold 3 such worker(s) at most" in unplaceable(res, ONE_GPU_NODES[:3])


def test_a_gpu_trial_cannot_be_placed_where_there_is_no_gpu() -> None:
    res = resources("resources=gpu")
    assert unplaceable(res, [{"CPU": 64.0}]).startswith("a trial needs 1 x CPU 4, GPU 1, and the 1 node(s) hold 0")
    assert unplaceable(res, [{"CPU": 64.0, "GPU": 1.0}]) is None
    fractional = resources("resources=fractional_gpu")
    assert unplaceable(fractional, [{"CPU": 64.0, "GPU": 1.0}]) is None


def test_a_local_sweep_whose_ray_cannot_hold_a_trial_stops_with_one_line(tmp_path: Path) -> None:
    """Ray Tune does not see a Ray Train trial's workers (its TorchTrainer reserves them): without this check the
    trial waits for a 4-CPU node that this machine's Ray (2 CPUs) never gets."""
    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", "experiment=tiny", "wandb.mode=disabled",
                        f"output_dir={tmp_path / 'runs'}", "resources.num_cpus=2", "resources.cpus_per_trial=2",
                        "resources.workers_per_trial=2", "resources.placement=strict_pack"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "lora_tune: error: resources: no trial could start on this machine: resources.placement=strict_pack puts a "
        "trial's 2 workers on one node, which needs CPU 4, GPU 0; the largest node has CPU 2, GPU 0 "
        "(resources.placement=pack lets them use several nodes)")
    assert not list((tmp_path / "runs").rglob("config.yaml"))
