"""Benchmark settings per model: real budgets on SmolLM2-135M (a full `make bench`: ~65 minutes on 2 cores).

`SETTINGS[model]` is used by `python -m benchmarks.run`; `QUICK[model]` by `--quick` (seconds, for the test).
Every sweep of one model uses the same data, search space (conf/search_space/default.yaml), seed, step budget
and concurrency (2 trials at once, 1 CPU and 1 torch thread each): the quickstart's settings unless named here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class BenchSettings:
    model: str                 # conf/model option
    num_samples: int = 16      # P1/P4: configs sampled from the default space
    max_steps: int = 30        # P1/P4: optimizer steps per trial (ASHA's max_t), as the quickstart
    eval_every: int = 10       # evaluation / report interval (ASHA rungs fall on multiples of it)
    grace_period: int = 10     # ASHA: steps before a trial may be stopped
    reduction_factor: int = 3  # ASHA: keep the top 1/reduction_factor at each rung
    test_examples: int = 50    # P1/P4: test rows the winner is scored on after the sweep
    quickstart: tuple[str, ...] = ()  # P3: overrides on top of the quickstart (none: `make sweep` itself)
    p2_repeats: int = 3        # P2: reused/reloaded pairs measured (median reported)
    p2_bits: tuple[int, ...] = (4, 16)  # P2: base precisions measured
    pack_steps: int = 12       # PACK: optimizer steps per arm
    pack_batch_size: int = 16  # PACK: examples per step
    pack_seq_len: int = 256    # PACK: tokens per packed row
    ckpt_steps: int = 30       # CKPT: steps of the trial whose checkpoint bytes are counted
    max_concurrent: int = 2    # trials at once (2 cores, cpus_per_trial=1)
    seed: int = 0              # sampling, adapter init, data order

    def overrides(self, scheduler: str = "asha") -> list[str]:
        """Hydra overrides shared by the P1/P4 sweeps of this model: the quickstart's data and budget, W&B off,
        no default-LoRA baseline, generation never (HF's search computes eval loss only); ASHA's keys only with
        scheduler=asha (a scheduler group holds only its own keys)."""
        asha = [f"scheduler.grace_period={self.grace_period}", f"scheduler.reduction_factor={self.reduction_factor}"]
        return [
            f"model={self.model}", f"seed={self.seed}", "search_space=default", "wandb.mode=disabled",
            "eval.baseline=false", "eval.generate=never", f"train.eval_every={self.eval_every}",
            f"data.test_examples={self.test_examples}", "resources=cpu", "resources.cpus_per_trial=1",
            f"resources.num_cpus={self.max_concurrent}", f"search_alg.max_concurrent={self.max_concurrent}",
            f"scheduler={scheduler}", *(asha if scheduler == "asha" else []),
            f"num_samples={self.num_samples}", f"max_steps={self.max_steps}",
        ]

    def quickstart_overrides(self) -> list[str]:
        """P3: the quickstart as `make sweep` runs it (W&B offline, baseline on), 2 CPUs."""
        return [f"model={self.model}", f"resources.num_cpus={self.max_concurrent}", *self.quickstart]

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS = {
    "smollm2": BenchSettings(model="smollm2"),
    "tiny": BenchSettings(model="tiny", p2_repeats=5),
}

QUICK = {name: replace(s, num_samples=4, max_steps=4, eval_every=2, grace_period=2, reduction_factor=2,
                       test_examples=4, p2_repeats=1, p2_bits=(4,), pack_steps=2, pack_batch_size=4,
                       pack_seq_len=128, ckpt_steps=4,
                       quickstart=("num_samples=2", "max_steps=4", "train.eval_every=2", "data.test_examples=4",
                                   "data.eval_examples=4", "data.exact_match_examples=2", "wandb.mode=disabled"))
         for name, s in SETTINGS.items()}
