import json

import numpy as np
import pytest
import torch

from iclevr.labels import COURSE_OBJECTS, check_objects_json, validate_objects_json
from pipeline_iclevr import COLORS, LABELS, SHAPES, LabelVocabulary


@pytest.fixture
def vocab():
    return LabelVocabulary()


def test_order_is_shape_major_colour_minor():
    assert len(LABELS) == 24
    for s, shape in enumerate(SHAPES):
        for c, color in enumerate(COLORS):
            assert LABELS[s * 8 + c] == f"{color} {shape}"


def test_matches_course_objects_json():
    course = json.loads(COURSE_OBJECTS.read_text())
    assert course == {name: i for i, name in enumerate(LABELS)}
    check_objects_json(COURSE_OBJECTS)


def test_names_indices_multi_hot_round_trip(vocab):
    vector = vocab.encode(["Red Sphere", " cyan_cube "])
    assert vector.dtype == torch.float32 and vector.shape == (24,)
    assert vector.nonzero().flatten().tolist() == [6, 9]
    assert vocab.decode(vector) == ["cyan cube", "red sphere"]
    assert torch.equal(vocab.encode([9, 6]), vector)
    assert torch.equal(vocab.encode(vector), vector)
    assert vocab.indices(["red sphere", "cyan cube"]) == [6, 9]
    assert vocab.names(["Red Sphere", 6]) == ["red sphere", "cyan cube"]


def test_batches(vocab):
    batch = vocab.encode_batch([["gray cube"], [23, 0], torch.eye(24)[5]])
    assert batch.shape == (3, 24)
    assert vocab.decode_batch(batch) == [["gray cube"], ["gray cube", "yellow cylinder"], ["purple cube"]]
    assert torch.equal(vocab.encode_batch(batch), batch)
    assert vocab.null_condition(4).shape == (4, 24) and vocab.null_condition().sum() == 0


@pytest.mark.parametrize(
    "condition, message",
    [
        (["red spher"], "^Unknown i-CLEVR label 'red spher'. Did you mean 'red sphere'"),
        (["pink cube"], "Unknown i-CLEVR label 'pink cube'"),
        (["red sphere", "Red Sphere"], r"holds the label\(s\) \['red sphere'\] twice"),
        ([3, 3], r"holds the label\(s\) \['green cube'\] twice"),
        ([], "The condition is empty"),
        ([24], "label index 24, out of range: valid indices are 0..23"),
        ([-1], "label index -1, out of range"),
        ([1.0], r"holds the label 1.0 \(float\): a label is a name such as 'gray cube' or an integer index 0..23"),
        ([True], r"holds the label True \(bool\)"),
        (torch.ones(23), r"multi-hot row of shape \(23,\); it must have shape \(24,\).*give a list such as \[9, 6\]"),
        (torch.zeros(24), "all-zero multi-hot row"),
        (torch.full((24,), 0.5), r"may hold only 0 and 1, got \[0.5\]"),
        (torch.full((24,), float("nan")), r"may hold only 0 and 1, got \[nan\]"),
        (None, "labels must be a condition .* got NoneType None"),
        ({"red sphere": 1}, "labels must be a condition .* got dict"),
    ],
)
def test_bad_conditions(vocab, condition, message):
    with pytest.raises(ValueError, match=message):
        vocab.encode(condition)


def test_one_reader_takes_every_form_a_user_writes(vocab):
    """Names, Python and numpy integers, a bare name, multi-hot rows as tensors or numpy arrays: one reader, one answer."""
    red_sphere = torch.eye(24)[9]
    for condition in (["red sphere"], "Red Sphere", [9], [np.int64(9)], (np.int32(9),), red_sphere, np.eye(24)[9],
                      np.eye(24, dtype=np.float32)[9], [torch.tensor(9)]):
        assert torch.equal(vocab.read(condition), red_sphere[None]), condition
    batch = vocab.read(np.stack([np.eye(24)[9], np.eye(24)[0]]))
    assert vocab.decode_batch(batch) == [["red sphere"], ["gray cube"]]
    assert torch.equal(vocab.read([["red sphere"], np.eye(24)[0], [np.int64(0)]]), torch.stack([red_sphere, torch.eye(24)[0]] * 1 + [torch.eye(24)[0]]))


def test_unknown_label_lists_valid_labels(vocab):
    with pytest.raises(ValueError) as info:
        vocab.index("violet cone")
    assert "gray cube" in str(info.value) and "yellow cylinder" in str(info.value)


@pytest.mark.parametrize(
    "batch, message",
    [
        ([], "The condition is empty"),
        ([["red sphere"], "blue cube"], r"Condition 1 is the bare label 'blue cube' in a list of conditions: write \['blue cube'\]"),
        ([["red sphere"], ["blu cube"]], "Condition 1: Unknown i-CLEVR label 'blu cube'"),
        ([["red sphere"], {"blue cube": 1}], "Condition 1 is dict"),
        ([["red sphere"], [1.5]], r"Condition 1 holds the label 1.5 \(float\)"),
        (torch.ones(2, 3, 24), r"one row \(24,\) or a batch \(batch, 24\), got shape \(2, 3, 24\)"),
        (torch.stack([torch.eye(24)[0], torch.zeros(24)]), "Condition 1 is an all-zero multi-hot row"),
        (torch.zeros(0, 24), "The condition is empty"),
    ],
)
def test_bad_batches(vocab, batch, message):
    with pytest.raises(ValueError, match=message):
        vocab.encode_batch(batch)


def test_decode_batch_rejects_vectors(vocab):
    with pytest.raises(ValueError, match="expects a"):
        vocab.decode_batch(torch.eye(24)[0])


def test_objects_json_mismatch(tmp_path):
    swapped = {name: i for i, name in enumerate(LABELS)}
    swapped["gray cube"], swapped["red cube"] = 1, 0
    with pytest.raises(ValueError, match="'gray cube' has index 1, the course order gives 0"):
        validate_objects_json(swapped)
    with pytest.raises(ValueError, match="missing label"):
        validate_objects_json({"gray cube": 0})
    with pytest.raises(ValueError, match="unknown label 'pink cube'"):
        validate_objects_json({**{n: i for i, n in enumerate(LABELS)}, "pink cube": 24})
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match=str(path)):
        check_objects_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_objects_json(path)


def test_a_vocabulary_uses_the_map_it_is_given():
    vocab = LabelVocabulary({"dog": 1, "cat": 0, "red bird": 2})
    assert vocab.labels == ("cat", "dog", "red bird") and len(vocab) == 3
    assert vocab.encode(["dog"]).tolist() == [0.0, 1.0, 0.0]
    assert vocab.decode(torch.tensor([1.0, 0.0, 1.0])) == ["cat", "red bird"]
    assert vocab.names(["RED_bird"]) == ["red bird"]
    with pytest.raises(ValueError, match="Unknown label 'cow'.*Valid labels are: cat, dog, red bird"):
        vocab.index("cow")
    assert LabelVocabulary().labels == LABELS  # the default stays i-CLEVR's


@pytest.mark.parametrize("label2id, message", [
    ({}, "non-empty map"),
    ({"Dog": 0}, "lower case"),
    ({"dog": 0, "cat": 2}, r"indices must be the integers 0..1"),
    ({"dog": 0, "cat": 0}, r"indices must be the integers 0..1"),
    ({"dog": 0, "cat": "1"}, r"indices must be the integers 0..1"),
])
def test_a_bad_vocabulary_is_named(label2id, message):
    with pytest.raises(ValueError, match=message):
        LabelVocabulary(label2id)
