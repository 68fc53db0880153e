"""Generation metrics: greedy answers scored against references, each a mean over rows in [0, 1].

    exact_match              the answer equals the reference (surrounding whitespace ignored)
    normalized_exact_match   equal after lower-casing, removing punctuation and collapsing whitespace
    contains                 the normalized reference occurs in the normalized answer
    token_f1                 SQuAD-style F1 over normalized tokens
    rouge_l                  ROUGE-L F-measure (Google's rouge-score package)
    regex                    eval.answer_regex extracts the answer from both sides (group 1, else the match),
                             which must be equal; e.g. GSM8K's `#### (\\S+)`
    module:function          your own scorer: function(predictions, references) -> float in [0, 1]

Each is reported as eval_<name> (a user scorer as eval_<function>) at evaluations and on the test split; a
built-in one also as eval_<name>_se, its standard error over the rows (how far another draw of as many rows could
move it: differences between trials below it are noise of the rows scored).
"""

from __future__ import annotations

import importlib
import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Callable

from lora_tune.config import METRICS, metric_name

Scorer = Callable[[list[str], list[str]], float]
PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(PUNCTUATION.sub(" ", text.lower()).split())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def exact_match(predictions: list[str], references: list[str]) -> float:
    return _mean([float(p.strip() == r.strip()) for p, r in zip(predictions, references)])


def normalized_exact_match(predictions: list[str], references: list[str]) -> float:
    return _mean([float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)])


def contains(predictions: list[str], references: list[str]) -> float:
    return _mean([float(normalize(r) in normalize(p)) for p, r in zip(predictions, references)])


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: list[str], references: list[str]) -> float:
    return _mean([_f1(p, r) for p, r in zip(predictions, references)])


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)])


def extract(pattern: str, text: str) -> str | None:
    """Group 1 of the pattern's first match (the whole match when it has no group), stripped."""
    found = re.search(pattern, text)
    if not found:
        return None
    return (found.group(1) if found.groups() else found.group(0)).strip()


def regex_match(pattern: str) -> Scorer:
    """Equal extracted answers; a reference without a match is compared whole."""
    def score(predictions: list[str], references: list[str]) -> float:
        values = []
        for p, r in zip(predictions, references):
            expected = extract(pattern, r) or r.strip()
            values.append(float(extract(pattern, p) == expected))
        return _mean(values)
    return score


BUILTIN: dict[str, Scorer] = {"exact_match": exact_match, "normalized_exact_match": normalized_exact_match,
                              "contains": contains, "token_f1": token_f1, "rouge_l": rouge_l}


def load_user_scorer(spec: str) -> Scorer:
    """`package.module:function`; raises ValueError (one line) when it cannot be imported."""
    module_name, function = spec.rsplit(":", 1)
    try:
        found = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"eval.metrics: cannot load {spec} ({type(exc).__name__}: {exc}); accepted: "
                         "module:function importable where the sweep runs (e.g. a module in your working directory)"
                         ) from None
    if not callable(found):
        raise ValueError(f"eval.metrics: {spec} is not a function")
    return found


def scorer(name: str, answer_regex: str | None = None) -> Scorer:
    if name == "regex":
        return regex_match(answer_regex or "")
    if name in BUILTIN:
        return BUILTIN[name]
    return load_user_scorer(name)


def check_metrics(names: list[str], answer_regex: str | None) -> list[str]:
    """User scorers must import (checked before Ray starts); built-ins always do."""
    problems = []
    for name in names:
        if name not in METRICS:
            try:
                scorer(name, answer_regex)
            except ValueError as exc:
                problems.append(str(exc))
    return problems


def score(names: list[str], predictions: list[str], references: list[str],
          answer_regex: str | None = None) -> dict[str, float]:
    """{eval_<name>: value} for every metric; a user scorer must return a number in [0, 1]."""
    out = {}
    for name in names:
        value = scorer(name, answer_regex)(list(predictions), list(references))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= float(value) <= 1:
            raise ValueError(f"eval.metrics: {name} returned {value!r}; accepted: a number in [0, 1]")
        out[metric_name(name)] = float(value)
    return out


def standard_errors(names: list[str], predictions: list[str], references: list[str],
                    answer_regex: str | None = None) -> dict[str, float]:
    """{eval_<name>_se: standard error of the mean over rows} of each built-in metric (each is a mean of per-row
    values: their standard deviation over sqrt(rows)); a scorer of yours need not be a mean over rows, so it gets
    none, nor does a single row."""
    out = {}
    for name in names:
        if name not in METRICS or len(predictions) < 2:
            continue
        score_row = scorer(name, answer_regex)
        values = [score_row([p], [r]) for p, r in zip(predictions, references)]
        out[f"{metric_name(name)}_se"] = statistics.stdev(values) / math.sqrt(len(values))
    return out
