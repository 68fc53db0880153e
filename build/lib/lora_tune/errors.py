"""One way to report bad input: a `ConfigError` holds one line per problem; `fail` prints them and exits 2.

Every command (`lora_tune.sweep`, `train`, `plan`, `report`, `export`, `generate`, `jobs`, `registry`) reports a
problem the same way: `lora_tune: error: <key>: <what is wrong>; accepted: <what is>` on stderr, no traceback,
exit status 2.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class ConfigError(ValueError):
    """Every problem found in the input, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def fail(problems: list[str] | str) -> NoReturn:
    """Print each problem on one line and exit 2 (no traceback)."""
    for problem in [problems] if isinstance(problems, str) else problems:
        print(f"lora_tune: error: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2)
