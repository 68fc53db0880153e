"""Generate the `shopping` multi-turn chat dataset (train / validation / test JSONL, `messages` format).

A user builds a shopping list over a few turns (adding items, sometimes removing one) and finally asks what is
on it; the assistant acknowledges each change and answers the last question with the list, comma-separated, in
the order the items were added. Every assistant turn is supervised; the generation metrics score the last one
(token F1 gives partial credit for a partly right list). Rows look like::

    {"id": "shopping-train-00000", "messages": [
        {"role": "user", "content": "Add apples and rice."}, {"role": "assistant", "content": "Added apples and rice."},
        {"role": "user", "content": "Take apples off the list."}, {"role": "assistant", "content": "Removed apples."},
        {"role": "user", "content": "What is on my list?"}, {"role": "assistant", "content": "rice"}]}

Run from the repository root::

    python scripts/make_shopping.py                  # writes data/shopping/{train,validation,test}.jsonl
    python scripts/make_shopping.py --seed 1 --out /tmp/shopping

The system message ("You keep the user's shopping list. ...") is conf/data/shopping.yaml's data.system_prompt,
which lora_tune puts before conversations that have none. Standard library only; output is fully determined by
``--seed``; no conversation occurs twice across splits.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPLIT_SIZES: dict[str, int] = {"train": 2000, "validation": 200, "test": 200}
ITEMS = [
    "apples", "bananas", "oranges", "lemons", "grapes", "pears", "tomatoes", "potatoes", "onions", "garlic",
    "carrots", "spinach", "lettuce", "cucumbers", "peppers", "mushrooms", "broccoli", "rice", "pasta", "bread",
    "flour", "sugar", "salt", "coffee", "tea", "milk", "oat milk", "butter", "cheese", "yogurt", "eggs", "tofu",
    "chicken", "salmon", "beef", "beans", "lentils", "chickpeas", "olive oil", "vinegar", "honey", "jam",
    "peanut butter", "cereal", "oats", "cookies", "chocolate", "crackers", "orange juice", "sparkling water",
    "soap", "shampoo", "toothpaste", "paper towels", "dish soap", "batteries", "napkins", "ice cream",
    "frozen peas", "brown rice",
]
ADD = ["Add {items}.", "Please add {items} to my list.", "Put {items} on the list.", "I also need {items}.",
       "Can you add {items}?"]
REMOVE = ["Remove {item}.", "Take {item} off the list.", "Actually, I don't need {item}.", "Drop {item}."]
ASK = ["What is on my list?", "Read me my list.", "What do I need to buy?", "What's on the list now?"]


def spoken(items: list[str]) -> str:
    """apples / apples and rice / apples, rice and tea."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def conversation(rng: random.Random) -> list[dict[str, str]]:
    """One dialogue: 2-4 additions of 1-2 new items, sometimes a removal, then the question and the list."""
    messages: list[dict[str, str]] = []
    wanted: list[str] = []
    pool = rng.sample(ITEMS, 8)
    for _ in range(rng.randint(2, 4)):
        added = [pool.pop() for _ in range(rng.randint(1, 2))]
        wanted += added
        messages += [{"role": "user", "content": rng.choice(ADD).format(items=spoken(added))},
                     {"role": "assistant", "content": f"Added {spoken(added)}."}]
    if len(wanted) > 2 and rng.random() < 0.35:
        gone = wanted.pop(rng.randrange(len(wanted)))
        messages += [{"role": "user", "content": rng.choice(REMOVE).format(item=gone)},
                     {"role": "assistant", "content": f"Removed {gone}."}]
    messages += [{"role": "user", "content": rng.choice(ASK)},
                 {"role": "assistant", "content": ", ".join(wanted)}]
    return messages


def generate(seed: int = 0) -> dict[str, list[dict]]:
    """The three splits; every conversation is distinct across all of them."""
    rng = random.Random(seed)
    seen, pool = set(), []
    total = sum(SPLIT_SIZES.values())
    while len(pool) < total:
        messages = conversation(rng)
        key = json.dumps(messages)
        if key not in seen:
            seen.add(key)
            pool.append(messages)
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        rows = pool[start:start + size]
        splits[name] = [{"id": f"shopping-{name}-{i:05d}", "messages": m} for i, m in enumerate(rows)]
        start += size
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (trailing newline), via a temp file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description="Generate the shopping multi-turn chat dataset.")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("data/shopping"), help="output directory")
    args = parser.parse_args(argv)
    paths = {}
    for name, rows in generate(args.seed).items():
        paths[name] = args.out / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
        print(f"wrote {len(rows):5d} rows to {paths[name]}")
    return paths


if __name__ == "__main__":
    main()
