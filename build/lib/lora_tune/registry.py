"""Upload a sweep's offline W&B runs and perform its pending W&B Registry links (tracking.sync).

    WANDB_API_KEY=... python -m lora_tune.registry sync runs/<sweep>               # --timeout 600 by default
    WANDB_API_KEY=... python -m lora_tune.registry sync s3://bucket/prefix/<sweep>

Idempotent: runs already uploaded and links already made are left alone; exits 1 while a link is pending.
"""

from __future__ import annotations

import argparse

from lora_tune.errors import fail
from lora_tune.storage import StorageError, Store
from lora_tune.tracking import sync


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lora_tune.registry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("sync", help="upload the sweep's offline runs, then perform its pending Registry links")
    cmd.add_argument("sweep", help="the sweep: runs/<sweep_name> or s3://bucket/prefix/<sweep_name>")
    cmd.add_argument("--timeout", type=float, default=600.0, help="seconds wandb sync may take (default 600)")
    args = parser.parse_args(argv)
    try:
        store = Store.at(args.sweep)
        if not store.is_file("config.yaml"):
            fail(f"sweep: {args.sweep} is not a sweep (no config.yaml); accepted: a sweep folder such as "
                 "runs/<sweep_name> or s3://bucket/prefix/<sweep_name>")
        done = sync(store, timeout_s=args.timeout)
    except StorageError as exc:
        fail(f"sweep: {exc}")
    for state in ("linked", "already_linked", "waiting", "failed"):
        for name in done[state]:
            print(f"lora_tune: {state.replace('_', ' ')}: {name}")
    print(f"lora_tune: synced {len(done['synced'])} run(s); {len(done['linked'])} linked now, "
          f"{len(done['already_linked'])} already, {len(done['waiting']) + len(done['failed'])} still pending")
    raise SystemExit(1 if done["waiting"] or done["failed"] else 0)


if __name__ == "__main__":
    main()
