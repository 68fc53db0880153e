"""Benchmark settings per model: step counts chosen so that the whole `make bench` fits ~20 minutes on 2 cores.

`SETTINGS[model]` is used by `python -m benchmarks.run`; `QUICK[model]` by `--quick` (seconds, for the test).
Every comparison of one model uses the same data slice, search space (conf/search_space/default.yaml), seed,
step budget and concurrency (2 trials at once, 1 CPU and 1 torch thread each).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MODELS = {"tiny": "tiny", "smollm2": "smollm2"}  # --model value -> conf/model/<name>.yaml


@dataclass(frozen=True)
class BenchSettings:
    model: str                 # conf/model option
    num_samples: int           # P1/P4: configs sampled from the default space
    max_steps: int             # P1/P4: optimizer steps per trial (ASHA's max_t)
    eval_every: int            # evaluation / report interval (ASHA rungs fall on multiples of it)
    grace_period: int          # ASHA: steps before a trial may be stopped
    reduction_factor: int      # ASHA: keep the top 1/reduction_factor at each rung
    p3_samples: int            # P3: configs run both as a sweep and as bare run_trial calls
    p3_steps: int              # P3: steps per trial
    p2_repeats: int            # P2: reused/reloaded pairs measured (median reported)
    p2_bits: tuple = (4, 16)   # P2: base precisions measured
    batch_size: int = 4        # examples per step
    max_seq_len: int = 64      # tokens per example
    max_train_examples: int = 256  # training rows
    eval_examples: int = 8     # validation rows for eval loss (one batch: HF and lora_tune compute the same mean)
    test_examples: int = 4     # test rows for the sweep's final exact match (kept small: not what is measured)
    max_concurrent: int = 2    # trials at once (2 cores, cpus_per_trial=1)
    seed: int = 0              # sampling, adapter init, data order

    def overrides(self) -> list[str]:
        """Hydra overrides shared by every sweep of this model."""
        return [
            f"model={self.model}", f"seed={self.seed}", "search_space=default", "wandb.mode=disabled",
            "eval.baseline=false", f"train.batch_size={self.batch_size}", f"train.eval_every={self.eval_every}",
            f"data.max_seq_len={self.max_seq_len}", f"data.max_train_examples={self.max_train_examples}",
            f"data.eval_examples={self.eval_examples}", "data.exact_match_examples=0",
            f"data.test_examples={self.test_examples}", "resources=cpu", "resources.cpus_per_trial=1",
            f"resources.num_cpus={self.max_concurrent}", f"search_alg.max_concurrent={self.max_concurrent}",
            f"scheduler.grace_period={self.grace_period}", f"scheduler.reduction_factor={self.reduction_factor}",
        ]

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS = {
    "tiny": BenchSettings(model="tiny", num_samples=16, max_steps=27, eval_every=3, grace_period=3,
                          reduction_factor=3, p3_samples=4, p3_steps=30, p2_repeats=5),
    "smollm2": BenchSettings(model="smollm2", num_samples=16, max_steps=9, eval_every=1, grace_period=1,
                             reduction_factor=3, p3_samples=2, p3_steps=8, p2_repeats=2),
}

QUICK = {name: replace(s, num_samples=4, max_steps=4, eval_every=2, grace_period=2, reduction_factor=2,
                       p3_samples=2, p3_steps=4, p2_repeats=1, p2_bits=(4,), max_train_examples=32)
         for name, s in SETTINGS.items()}
