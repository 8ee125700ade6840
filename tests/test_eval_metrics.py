"""Unit tests of the evaluation's pure functions: ROUGE-L, exact match, recovery ratio (checkers: test_eval_checkers.py)."""

import random

import pytest

from genpi.eval.metrics import exact_match, lcs_length, rouge_l, tokenize
from genpi.eval.recovery import recovery

# --- ROUGE-L and exact match


def _lcs_table(a, b):
    """Textbook dynamic programme, the reference for the bit-parallel implementation."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_lcs_matches_dynamic_programme_on_random_sequences():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == _lcs_table(a, b), (a, b)


def test_lcs_hand_cases():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["x"]) == 0
    assert lcs_length(["x"] * 70, ["x"] * 65) == 65  # more than 64 positions: big-integer bit vectors


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # precision 2/2, recall 2/4: F = 2 * 1 * 0.5 / 1.5
    assert rouge_l("cat mat", "the cat the mat") == pytest.approx(2 / 3)


def test_rouge_l_bounds_and_edge_cases():
    assert rouge_l("Act: finish", "act:   FINISH") == 1.0  # case and spacing do not matter
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0
    assert rouge_l("something", "") == 0.0


def test_punctuation_is_part_of_the_shape():
    assert tokenize("Act: answer(17)") == ["act", ":", "answer", "(", "17", ")"]
    assert rouge_l("Act finish", "Act: finish") == pytest.approx(0.8)  # P = 1, R = 2/3


def test_exact_match():
    assert exact_match("Think: x\nAct: finish", "  Think: x \n Act: finish\n") == 1.0
    assert exact_match("Act: finish", "Act: Finish") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("a", "") == 0.0


# --- recovery ratio


def test_recovery_defined():
    prompted, unprompted = [1.0] * 10, [0.0] * 10
    system = [1.0] * 5 + [0.0] * 5
    r = recovery(prompted, unprompted, system)
    assert r["defined"] and r["ratio"] == pytest.approx(0.5)
    assert r["gap"] == pytest.approx(1.0)
    assert r["ratio_ci"][0] <= 0.5 <= r["ratio_ci"][1]
    assert r["n"] == 10


def test_recovery_is_not_clipped():
    r = recovery([0.6, 0.7, 0.8, 0.7], [0.1, 0.2, 0.1, 0.2], [0.9, 0.9, 1.0, 0.9])
    assert r["defined"] and r["ratio"] > 1
    r = recovery([0.6, 0.7, 0.8, 0.7], [0.1, 0.2, 0.1, 0.2], [0.0, 0.0, 0.1, 0.0])
    assert r["defined"] and r["ratio"] < 0


def test_recovery_undefined_when_bounds_are_equal():
    r = recovery([0.5] * 8, [0.5] * 8, [0.9] * 8)
    assert r["ratio"] is None and not r["defined"]
    assert "noise floor" in r["reason"]


def test_recovery_undefined_below_the_noise_floor():
    r = recovery([0.51] * 8, [0.50] * 8, [0.9] * 8, noise_floor=0.02)
    assert r["ratio"] is None and "noise floor" in r["reason"]
    assert recovery([0.51] * 8, [0.50] * 8, [0.9] * 8, noise_floor=0.0)["defined"]


def test_recovery_undefined_when_the_bootstrap_interval_contains_zero():
    # the whole gap of 0.1 comes from one item of ten: resamples without it (~35%) have no gap at all
    prompted = [1.0] + [0.0] * 9
    r = recovery(prompted, [0.0] * 10, [0.0] * 10)
    assert r["gap"] == pytest.approx(0.1)
    assert r["ratio"] is None and "bootstrap" in r["reason"]
    assert r["gap_ci"][0] <= 0 <= r["gap_ci"][1]


def test_recovery_undefined_with_fewer_than_two_items():
    assert recovery([1.0], [0.0], [1.0])["ratio"] is None
    empty = recovery([], [], [])
    assert empty["ratio"] is None and empty["n"] == 0


def test_recovery_rejects_unpaired_scores():
    with pytest.raises(ValueError):
        recovery([1.0, 1.0], [0.0], [0.5, 0.5])


def test_the_mean_interval_brackets_the_mean_and_narrows_with_more_items():
    from genpi.eval.recovery import mean_interval

    few = mean_interval([1, 0] * 5, seed=0)
    many = mean_interval([1, 0] * 50, seed=0)
    assert few[0] < 0.5 < few[1] and many[0] < 0.5 < many[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert mean_interval([1, 1, 1]) == [1.0, 1.0]
    assert mean_interval([1]) is None
