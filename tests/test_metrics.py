import pytest
import torch

from iclevr.metrics import course_accuracy, course_hits, evaluate_scores, exact_set_matches, miss_kinds
from pipeline_iclevr import LABELS


def _rows(*pairs):
    """(scores as {index: value}, true indices) → (scores, targets) tensors."""
    scores, targets = torch.zeros(len(pairs), 24), torch.zeros(len(pairs), 24)
    for row, (values, true) in enumerate(pairs):
        for index, value in values.items():
            scores[row, index] = value
        targets[row, true] = 1
    return scores, targets


def test_hand_computed_k1_k2_k3():
    scores, targets = _rows(
        ({3: 0.9, 5: 0.2}, [3]),  # k=1, top-1 is 3: 1 hit
        ({3: 0.9, 5: 0.8, 7: 0.7}, [5, 7]),  # k=2, top-2 = {3, 5}: 1 hit
        ({1: 0.6, 2: 0.5, 9: 0.4, 10: 0.3}, [1, 2, 10]),  # k=3, top-3 = {1, 2, 9}: 2 hits
        ({0: 0.1}, [23]),  # k=1, top-1 is 0 (largest score): 0 hits
    )
    assert course_hits(scores, targets).tolist() == [1, 1, 2, 0]
    assert course_accuracy(scores, targets) == pytest.approx(4 / 7)


def test_ties_go_to_the_lower_index():
    scores, targets = _rows(({4: 0.5, 8: 0.5}, [8]), ({4: 0.5, 8: 0.5}, [4]), ({}, [0, 1]), ({}, [22, 23]))
    # All-equal rows rank labels 0, 1, 2, ...
    assert course_hits(scores, targets).tolist() == [0, 1, 2, 0]


def test_perfect_and_exact_set():
    scores, targets = _rows(({2: 0.9, 7: 0.8}, [2, 7]), ({2: 0.9, 7: 0.8, 9: 0.6}, [2, 7]), ({2: 0.9, 7: 0.4}, [2, 7]))
    assert course_accuracy(scores, targets) == 1.0  # top-k cannot see the extra object in row 1
    assert exact_set_matches(scores, targets).tolist() == [True, False, False]


def test_report_breakdown_and_per_label():
    scores, targets = _rows(({3: 0.9}, [3]), ({3: 0.9, 5: 0.7}, [3, 4]), ({3: 0.2, 4: 0.9, 5: 0.8}, [3, 4, 5]))
    report = evaluate_scores(scores, targets)
    assert report["images"] == 3 and report["accuracy"] == pytest.approx(5 / 6)
    assert report["by_num_objects"]["2"] == {"images": 1, "accuracy": 0.5, "exact_set_accuracy": 0.0}
    assert report["by_num_objects"]["3"]["accuracy"] == 1.0 and report["by_num_objects"]["3"]["exact_set_accuracy"] == 0.0
    red_cube = report["per_label"]["gray sphere"]  # index 8: never predicted, never true
    assert red_cube == {"support": 0, "precision": None, "recall": None}
    assert report["per_label"]["green cube"] == {"support": 3, "precision": 1.0, "recall": 2 / 3}  # index 3
    assert report["per_label"]["purple cube"]["precision"] == 0.5  # index 5: predicted twice, true once


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        (torch.zeros(2, 24), torch.zeros(3, 24), "must both be"),
        (torch.zeros(1, 24), torch.full((1, 24), 0.5), "multi-hot"),
        (torch.zeros(1, 24), torch.zeros(1, 24), "at least one true label"),
    ],
)
def test_bad_inputs(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        course_accuracy(scores, targets)


def test_scores_must_match_the_vocabulary():
    with pytest.raises(ValueError, match="Expected 24 labels per row, got 23"):
        evaluate_scores(torch.zeros(2, 23), torch.ones(2, 23))
    with pytest.raises(ValueError, match="Expected 3 labels per row, got 24"):
        evaluate_scores(torch.zeros(1, 24), torch.ones(1, 24), labels=("cat", "dog", "bird"))


def test_any_vocabulary():
    """Single-label digits: the course metric is top-1 accuracy, per-label figures use the names, and with names that
    are not "<colour> <shape>" pairs every miss is a wrong object."""
    digits = ("zero", "one", "two")
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    targets = torch.eye(3)
    report = evaluate_scores(scores, targets, labels=digits)
    assert report["accuracy"] == pytest.approx(2 / 3) and report["misses"] == {"colour": 0, "shape": 0, "object": 1}
    assert set(report["per_label"]) == set(digits) and report["per_label"]["zero"]["precision"] == 0.5


def test_miss_kinds_pair_each_miss_with_a_wrong_label_sharing_an_attribute():
    def row(true, top):  # scores put the `top` labels first, in order
        scores = torch.zeros(len(LABELS))
        for rank, name in enumerate(top):
            scores[LABELS.index(name)] = 1 - rank / 10
        return scores, torch.tensor([float(name in true) for name in LABELS])

    rows = [row(["red cube"], ["blue cube"]),  # colour: a cube, drawn blue
            row(["red cube"], ["red sphere"]),  # shape: something red, not a cube
            row(["red cube"], ["blue sphere"]),  # object: nothing of it
            row(["red cube", "gray sphere"], ["gray sphere", "red cube"]),  # no miss
            # A greedy pairing would give red cube the green cube, leaving blue cube with nothing that shares an attribute;
            # the best pairing is red cube/red sphere (shape) and blue cube/green cube (colour).
            row(["red cube", "blue cube", "cyan cylinder"], ["green cube", "red sphere", "cyan cylinder"])]
    scores, targets = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    assert miss_kinds(scores, targets) == {"colour": 2, "shape": 2, "object": 1}
    assert evaluate_scores(scores, targets)["misses"] == miss_kinds(scores, targets)
    assert sum(miss_kinds(scores, targets).values()) == int(targets.sum()) - int(course_hits(scores, targets).sum())
