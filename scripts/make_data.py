"""Generate the `dates` date-normalisation dataset (train / validation / test JSONL).

Each example asks to convert a date written in one of many human formats into ISO 8601
``YYYY-MM-DD``. Rows look like::

    {"id": "dates-train-00000", "prompt": "Convert this date to ISO format (YYYY-MM-DD): March 15, 2024",
     "answer": "2024-03-15"}

Run from the repository root::

    python scripts/make_data.py                      # writes data/dates/{train,validation,test}.jsonl
    python scripts/make_data.py --seed 1 --out /tmp/dates

Standard library only; output is fully determined by ``--seed``. Every date (and therefore every
prompt) occurs at most once across all three splits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

SPLIT_SIZES: dict[str, int] = {"train": 3000, "validation": 300, "test": 300}
FIRST_DATE = dt.date(1950, 1, 1)
LAST_DATE = dt.date(2049, 12, 31)

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

TEMPLATES = [
    "Convert this date to ISO format (YYYY-MM-DD): {date}",
    "Rewrite the following date in ISO 8601 format (YYYY-MM-DD): {date}",
    "What is {date} in YYYY-MM-DD format?",
    "Normalize this date to YYYY-MM-DD: {date}",
    "Give the ISO 8601 date (YYYY-MM-DD) for: {date}",
]


def month_name(d: dt.date) -> str:
    """Full English month name (locale-independent)."""
    return MONTHS[d.month - 1]


def month_abbr(d: dt.date) -> str:
    """Three-letter English month abbreviation."""
    return MONTHS[d.month - 1][:3]


def weekday_name(d: dt.date) -> str:
    """Full English weekday name, computed from the date itself."""
    return WEEKDAYS[d.weekday()]


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


FORMATS: list[Callable[[dt.date], str]] = [
    lambda d: f"{month_name(d)} {d.day}, {d.year}",  # March 15, 2024
    lambda d: f"{d.day} {month_name(d)} {d.year}",  # 15 March 2024
    lambda d: f"{month_abbr(d)} {d.day} {d.year}",  # Mar 15 2024
    lambda d: f"{d.day} {month_abbr(d)} {d.year}",  # 15 Mar 2024
    lambda d: f"{d.day:02d}-{month_abbr(d)}-{d.year}",  # 15-Mar-2024
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year} (day/month/year)",  # 15/03/2024
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year} (month/day/year)",  # 03/15/2024
    lambda d: f"{d.day}.{d.month}.{d.year} (day.month.year)",  # 15.3.2024
    lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",  # 2024.03.15
    lambda d: f"{d.year}/{d.month}/{d.day}",  # 2024/3/15
    lambda d: f"the {ordinal(d.day)} of {month_name(d)}, {d.year}",  # the 15th of March, 2024
    lambda d: f"{month_name(d)} {ordinal(d.day)}, {d.year}",  # March 15th, 2024
    lambda d: f"{weekday_name(d)}, {month_name(d)} {d.day}, {d.year}",  # Friday, March 15, 2024
    lambda d: f"{weekday_name(d)[:3]} {d.day} {month_abbr(d)} {d.year}",  # Fri 15 Mar 2024
    lambda d: f"{month_name(d).upper()} {d.day}, {d.year}",  # MARCH 15, 2024
    lambda d: f"{d.year}{d.month:02d}{d.day:02d} (YYYYMMDD)",  # 20240315
]


def random_date(rng: random.Random) -> dt.date:
    """Uniformly random valid date in [FIRST_DATE, LAST_DATE]."""
    return dt.date.fromordinal(rng.randint(FIRST_DATE.toordinal(), LAST_DATE.toordinal()))


def make_example(rng: random.Random, d: dt.date) -> dict[str, str]:
    """Render one date with a random input format and instruction template."""
    text = rng.choice(FORMATS)(d)
    return {"prompt": rng.choice(TEMPLATES).format(date=text), "answer": d.isoformat()}


def generate(seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Build all splits; each date (hence each prompt) is used at most once across splits."""
    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    seen: set[dt.date] = set()
    pool: list[dict[str, str]] = []
    while len(pool) < total:
        d = random_date(rng)
        if d not in seen:
            seen.add(d)
            pool.append(make_example(rng, d))
    splits: dict[str, list[dict[str, str]]] = {}
    start = 0
    for name, size in SPLIT_SIZES.items():
        rows = pool[start : start + size]
        splits[name] = [{"id": f"dates-{name}-{i:05d}", **row} for i, row in enumerate(rows)]
        start += size
    return splits


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write one JSON object per line (trailing newline) via a temp file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_splits(splits: dict[str, list[dict[str, str]]], out: Path) -> dict[str, Path]:
    """Write each split to ``out/<split>.jsonl``; return the paths written."""
    paths = {name: out / f"{name}.jsonl" for name in splits}
    for name, rows in splits.items():
        write_jsonl(paths[name], rows)
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate the dates date-normalisation dataset.")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("data/dates"), help="output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    paths = write_splits(generate(args.seed), args.out)
    for name, path in paths.items():
        print(f"wrote {SPLIT_SIZES[name]:5d} rows to {path}")
    return paths


if __name__ == "__main__":
    main()
