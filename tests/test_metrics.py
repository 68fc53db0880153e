"""Each generation metric on cases checked by hand, a user scorer, and the metric as a sweep's objective."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lora_tune import metrics
from lora_tune.compose import compose_config
from lora_tune.errors import ConfigError


@pytest.mark.parametrize("name,prediction,reference,expected", [
    ("exact_match", " 2024-03-15\n", "2024-03-15", 1.0),
    ("exact_match", "2024-03-15.", "2024-03-15", 0.0),
    ("normalized_exact_match", "Milk,  EGGS!", "milk, eggs", 1.0),
    ("normalized_exact_match", "milk and eggs", "milk, eggs", 0.0),
    ("contains", "The answer is Paris, France.", "paris", 1.0),
    ("contains", "Lyon", "Paris", 0.0),
    # SQuAD F1: "milk eggs tea" vs "milk eggs bread": 2 common, precision 2/3, recall 2/3 -> 2/3
    ("token_f1", "milk, eggs, tea", "milk, eggs, bread", 2 / 3),
    ("token_f1", "milk", "milk, eggs", 2 * 1 * 0.5 / 1.5),
    ("token_f1", "", "", 1.0),
    # ROUGE-L: LCS of "the cat sat on the mat" / "the cat is on the mat" = 5 of 6 words each way -> F 5/6
    ("rouge_l", "the cat is on the mat", "the cat sat on the mat", 5 / 6),
    ("rouge_l", "nothing alike", "the cat sat", 0.0),
])
def test_builtin_metrics_on_hand_checked_cases(name: str, prediction: str, reference: str, expected: float) -> None:
    assert metrics.scorer(name)([prediction], [reference]) == pytest.approx(expected)


def test_regex_extracts_the_answer_from_both_sides() -> None:
    gsm8k = metrics.scorer("regex", r"#### (\S+)")
    assert gsm8k(["Half of 10 is 5. #### 5"], ["10 / 2 = 5\n#### 5"]) == 1.0
    assert gsm8k(["#### 6"], ["#### 5"]) == 0.0
    assert gsm8k(["no final answer"], ["#### 5"]) == 0.0
    assert metrics.scorer("regex", r"\d+")(["it is 42 of course"], ["42"]) == 1.0  # no group: the match


def test_scores_are_means_over_rows_named_eval_metric() -> None:
    scores = metrics.score(["exact_match", "token_f1"], ["a", "b c", "x"], ["a", "b", "y"])
    assert scores == {"eval_exact_match": pytest.approx(1 / 3),
                      "eval_token_f1": pytest.approx((1 + 2 / 3 + 0) / 3)}


def test_built_in_metrics_report_their_standard_error_over_the_rows(user_module: str) -> None:
    import statistics

    errors = metrics.standard_errors(["exact_match", "token_f1", f"{user_module}:first_word"], ["a", "b c", "x"],
                                     ["a", "b", "y"])
    # exact match is a proportion p over n rows: its standard error is sqrt(p (1 - p) / (n - 1))
    assert errors["eval_exact_match_se"] == pytest.approx(((1 / 3) * (2 / 3) / 2) ** 0.5)
    assert errors["eval_token_f1_se"] == pytest.approx(statistics.stdev([1, 2 / 3, 0]) / 3 ** 0.5)
    assert "eval_first_word_se" not in errors  # a scorer of yours need not be a mean over rows
    assert metrics.standard_errors(["exact_match"], ["a"], ["a"]) == {}  # one row: no spread to measure


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_scorers.py").write_text(
        "def first_word(predictions, references):\n"
        "    first = [(p.replace(',', ' ').split()[:1], r.replace(',', ' ').split()[:1])\n"
        "             for p, r in zip(predictions, references)]\n"
        "    hits = [a == b for a, b in first]\n"
        "    return sum(hits) / len(hits)\n"
        "def broken(predictions, references):\n"
        "    return 3.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_scorers"
    sys.modules.pop("my_scorers", None)


def test_a_user_scorer_is_called_with_two_lists_and_reported_by_its_name(user_module: str) -> None:
    scores = metrics.score([f"{user_module}:first_word"], ["milk and eggs", "tea"], ["milk, eggs", "coffee"])
    assert scores == {"eval_first_word": 0.5}
    with pytest.raises(ValueError, match="returned 3.0; accepted: a number in \\[0, 1\\]"):
        metrics.score([f"{user_module}:broken"], ["a"], ["a"])
    assert metrics.check_metrics([f"{user_module}:first_word"], None) == []
    (problem,) = metrics.check_metrics(["no_such_module:f"], None)
    assert problem.startswith("eval.metrics: cannot load no_such_module:f (ModuleNotFoundError")


def test_any_metric_can_be_the_sweeps_objective() -> None:
    cfg = compose_config(["eval.metrics=[rouge_l,token_f1]", "metric=eval_rouge_l", "mode=max"])
    assert cfg.metric_names() == ["eval_loss", "train_loss", "eval_rouge_l", "eval_token_f1"]
    cfg = compose_config(["eval.metrics=[my_scorers:first_word]", "metric=eval_first_word", "mode=max"])
    assert cfg.metric == "eval_first_word"
    with pytest.raises(ConfigError, match="metric: got 'eval_exact_match'; accepted .*eval_loss, train_loss, "
                                          "eval_rouge_l"):
        compose_config(["eval.metrics=[rouge_l]", "metric=eval_exact_match"])
    with pytest.raises(ConfigError, match="eval.metrics: got 'bleu'; accepted: exact_match"):
        compose_config(["eval.metrics=[bleu]"])
    assert compose_config(["data.format=text"]).generation_metrics() == []  # plain text: no exact match
