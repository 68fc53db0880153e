"""Can Ray place one trial's workers on a cluster? A trial is a placement group of one bundle per worker
({CPU: resources.cpus_per_trial, GPU: resources.gpus_per_trial}); a group Ray can never place leaves its trial
waiting forever, silently. strict_pack needs every bundle on one node; pack and spread are soft (Ray packs or
spreads when it can and places the bundles wherever they fit otherwise). Pure: the nodes come from the caller
(tuner.py asks the live cluster; tests give the shipped clusters' nodes)."""

from __future__ import annotations

from typing import Any

KEYS = ("CPU", "GPU")


def trial_bundle(res: Any) -> dict[str, float]:
    """What each of a trial's workers reserves."""
    return {"CPU": float(res.cpus_per_trial), "GPU": float(res.gpus_per_trial)}


def bundles_per_node(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many such bundles one node holds."""
    fits = [int(node.get(key, 0.0) // amount) for key, amount in bundle.items() if amount > 0]
    return min(fits) if fits else 1 << 30


def on_one_node(bundle: dict[str, float], workers: int) -> dict[str, float]:
    """What one node needs to hold all of a trial's workers (strict_pack)."""
    return {key: amount * workers for key, amount in bundle.items()}


def requirement(res: Any) -> str:
    """What a cluster must have for one trial, in words (the plan prints it)."""
    bundle, workers = trial_bundle(res), res.workers_per_trial
    if workers > 1 and res.placement == "strict_pack":
        return f"one node with {describe(on_one_node(bundle, workers))}"
    if workers > 1:
        return f"{workers} x {describe(bundle)} on any nodes"
    return f"a node with {describe(bundle)}"


def unplaceable(res: Any, nodes: list[dict[str, float]]) -> str | None:
    """Why a trial's workers can never be placed on `nodes` (each a node's total resources), or None if they can."""
    bundle, workers = trial_bundle(res), res.workers_per_trial
    capacity = [bundles_per_node(bundle, node) for node in nodes]
    if res.placement == "strict_pack" and workers > 1:
        if max(capacity, default=0) >= workers:
            return None
        return (f"resources.placement=strict_pack puts a trial's {workers} workers on one node, which needs "
                f"{describe(on_one_node(bundle, workers))}; the largest node has {describe(largest(nodes))} "
                "(resources.placement=pack lets them use several nodes)")
    if sum(capacity) >= workers:
        return None
    return (f"a trial needs {workers} x {describe(bundle)}, and the {len(nodes)} node(s) hold {sum(capacity)} such "
            f"worker(s) at most (largest node: {describe(largest(nodes))})")


def largest(nodes: list[dict[str, float]]) -> dict[str, float]:
    return max(nodes, key=lambda node: tuple(node.get(key, 0.0) for key in reversed(KEYS)), default={})


def describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{key} {resources.get(key, 0.0):g}" for key in KEYS)
