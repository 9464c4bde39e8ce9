import json
import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from iclevr.data import describe, load_train_dataset, read_json, skipped_images
from iclevr.images import collate_examples, to_model_input, to_uint8_images
from iclevr.labels import COURSE_TEST, COURSE_TRAIN_LABELS, BadDataError, load_conditions, parse_train_json, scene_id
from pipeline_iclevr import LabelVocabulary


def _write(folder, name, mode="RGB", size=(32, 24), color=(200, 40, 40)):
    if mode == "RGBA":
        color = (*color, 255)
    elif mode == "L":
        color = 128
    Image.new(mode, size, color).save(folder / name)


@pytest.fixture
def small_folder(tmp_path):
    """Four good 32x24 images (one opaque RGBA, as real i-CLEVR PNGs are) and their train.json."""
    labels = {}
    for i in range(4):
        name = f"CLEVR_train_{i // 2:06d}_{i % 2}.png"
        _write(tmp_path, name, mode="RGBA" if i == 3 else "RGB", color=(10 * i, 100, 200))
        labels[name] = ["red sphere"] if i % 2 == 0 else ["red sphere", "Cyan Cube"]
    (tmp_path / "train.json").write_text(json.dumps(labels))
    return tmp_path


def test_real_train_json_labels():
    records = parse_train_json(read_json(COURSE_TRAIN_LABELS, "train.json"), LabelVocabulary())
    assert len(records) == 18_009
    scenes = Counter(scene_id(name) for name, _ in records)
    assert len(scenes) == 6_003 and set(scenes.values()) == {3}
    assert Counter(len(labels) for _, labels in records) == {1: 6_003, 2: 6_003, 3: 6_003}
    for name, labels in records:  # file suffix k holds k + 1 objects
        assert len(labels) == int(name.rsplit("_", 1)[1].split(".")[0]) + 1


def test_real_test_json_conditions():
    conditions = load_conditions(COURSE_TEST)
    assert len(conditions) == 32 and sum(map(len, conditions)) == 72


def test_iclevr_layout(small_folder, tmp_path_factory):
    dataset = load_train_dataset(train_data_dir=small_folder, resolution=16, cache_dir=tmp_path_factory.mktemp("c"))
    assert set(dataset.column_names) == {"file_name", "label_names", "labels", "image"}
    assert dataset.features["image"].shape == (16, 16, 3) and dataset.features["image"].dtype == "uint8"
    assert len(dataset) == 4
    row = dataset.with_format("numpy")[1]
    assert row["image"].shape == (16, 16, 3)
    assert list(row["label_names"]) == ["red sphere", "cyan cube"]
    assert row["labels"].dtype == np.float32 and row["labels"].sum() == 2 and row["labels"][6] == 1
    # A flat colour survives the squash exactly; RGBA with an opaque alpha converts to RGB.
    assert tuple(dataset.with_format("numpy")[3]["image"][5, 5]) == (30, 100, 200)
    assert describe(dataset)["scenes"] == 2


def test_decoded_images_are_cached(small_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_train_dataset(train_data_dir=small_folder, resolution=16, cache_dir=cache)
    second = load_train_dataset(train_data_dir=small_folder, resolution=16, cache_dir=cache)
    assert first.cache_files and first.cache_files[0]["filename"] == second.cache_files[0]["filename"]
    assert len(list(cache.glob("iclevr-*.arrow"))) == 1
    # A changed file or resolution is a different cache entry, never a stale hit.
    load_train_dataset(train_data_dir=small_folder, resolution=8, cache_dir=cache)
    _write(small_folder, "CLEVR_train_000000_0.png", color=(1, 2, 3))
    changed = load_train_dataset(train_data_dir=small_folder, resolution=16, cache_dir=cache)
    assert len(list(cache.glob("iclevr-*.arrow"))) == 3
    assert changed.cache_files[0]["filename"] != first.cache_files[0]["filename"]


def test_train_json_option_and_rendered_data(rendered_dir, tmp_path):
    moved = tmp_path / "labels.json"
    shutil.copy(rendered_dir / "train.json", moved)
    dataset = load_train_dataset(train_data_dir=rendered_dir, train_json=moved, resolution=32, cache_dir=tmp_path)
    assert len(dataset) == 24
    stats = describe(dataset)
    assert stats["objects_per_image"] == {1: 8, 2: 8, 3: 8} and stats["scenes"] == 8


def test_imagefolder_with_metadata(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    rows = []
    for i in range(3):
        _write(tmp_path, f"{i}.png", color=(0, 50 * i, 0))
        rows.append({"file_name": f"{i}.png", "labels": ["green sphere", "gray cube"][: i % 2 + 1]})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load_train_dataset(train_data_dir=tmp_path, resolution=8, cache_dir=cache)
    assert len(dataset) == 3
    assert dataset[1]["label_names"] == ["green sphere", "gray cube"]
    assert sorted(dataset["file_name"]) == ["0.png", "1.png", "2.png"]
    with pytest.raises(ValueError, match="no column 'objects'"):
        load_train_dataset(train_data_dir=tmp_path, label_column="objects", cache_dir=cache)


def test_imagefolder_bad_labels(tmp_path, tmp_path_factory):
    _write(tmp_path, "0.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "labels": ["red spere"]}))
    with pytest.raises(BadDataError, match="row 0: Unknown i-CLEVR label 'red spere'. Did you mean 'red sphere'"):
        load_train_dataset(train_data_dir=tmp_path, cache_dir=tmp_path_factory.mktemp("hf"))


@pytest.fixture
def bad_folder(small_folder):
    labels = json.loads((small_folder / "train.json").read_text())
    good = (small_folder / "CLEVR_train_000000_0.png").read_bytes()
    (small_folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (small_folder / "empty.png").write_bytes(b"")
    _write(small_folder, "grey.png", mode="L")
    rgba = Image.new("RGBA", (8, 8), (1, 2, 3, 0))
    rgba.save(small_folder / "transparent.png")
    Image.new("1", (20000, 20000)).save(small_folder / "bomb.png")  # 48 KB on disk, 400M pixels: over PIL's own limit
    Image.new("RGB", (4100, 4100)).save(small_folder / "huge.png")  # 49 KB, 16.8M pixels: over the training-image limit
    for name in ("truncated.png", "empty.png", "grey.png", "transparent.png", "missing.png", "bomb.png", "huge.png"):
        labels[name] = ["blue cube"]
    (small_folder / "train.json").write_text(json.dumps(labels))
    return small_folder


def test_bad_images_are_named_and_counted(bad_folder, tmp_path):
    with pytest.raises(BadDataError) as info:
        load_train_dataset(train_data_dir=bad_folder, resolution=8, cache_dir=tmp_path)
    message = str(info.value)
    assert "7 bad images out of 11" in message and "--skip_bad_images" in message
    assert "truncated.png: unreadable or truncated image" in message
    assert "empty.png: unreadable or truncated image" in message
    assert "grey.png: greyscale image (mode L)" in message
    assert "transparent.png: image has transparent pixels" in message
    assert "missing.png: file is missing" in message
    assert "bomb.png: over the limit of 16,777,216 pixels for a training image" in message
    assert "huge.png: 4100x4100 pixels, over the limit of 16,777,216 for a training image" in message


def test_skip_bad_images_reports(bad_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = load_train_dataset(train_data_dir=bad_folder, resolution=8, cache_dir=tmp_path, skip_bad_images=True)
    assert len(dataset) == 4
    assert sorted(skipped_images(dataset)) == ["bomb.png", "empty.png", "grey.png", "huge.png", "missing.png",
                                               "transparent.png", "truncated.png"]
    assert "Skipped 7 bad images out of 11" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ({"a.png": ["red sphere"], "b.png": ["purple cone"], "c.png": "red sphere"}, "2 entries with invalid labels"),
        ({"a.png": []}, "a.png: The condition is empty: every image needs at least one label"),
        ({"a.png": ["red sphere", "red sphere"]}, r"a.png: The condition \['red sphere', 'red sphere'\] holds the label\(s\) \['red sphere'\] twice"),
        (["red sphere"], "must be a JSON object"),
        ({}, "lists no images"),
    ],
)
def test_bad_train_json(tmp_path, content, message):
    (tmp_path / "train.json").write_text(json.dumps(content))
    with pytest.raises(BadDataError, match=message):
        load_train_dataset(train_data_dir=tmp_path, cache_dir=tmp_path)


def test_bad_arguments(tmp_path, small_folder):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_train_dataset(train_data_dir=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_train_dataset(train_data_dir=small_folder, train_json=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="either --dataset_name or --train_data_dir"):
        load_train_dataset(train_data_dir=small_folder, dataset_name="x/y")
    with pytest.raises(ValueError, match="Give --train_data_dir"):
        load_train_dataset()
    with pytest.raises(ValueError, match="at least 8"):
        load_train_dataset(train_data_dir=small_folder, resolution=4)
    (small_folder / "objects.json").write_text(json.dumps({"red sphere": 0}))
    with pytest.raises(ValueError, match="objects.json does not match"):
        load_train_dataset(train_data_dir=small_folder)


def test_collate_and_flip():
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    rows = [{"image": images[i], "labels": torch.eye(24)[i]} for i in range(4)]
    batch = collate_examples(rows)
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["labels"].shape == (4, 24)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert torch.equal(to_uint8_images(batch["pixel_values"]), images)
    torch.manual_seed(0)
    flipped = collate_examples(rows * 8, random_flip=True)["pixel_values"]
    reference = to_model_input(torch.cat([images] * 8))
    same = (flipped == reference).flatten(1).all(1)
    mirrored = (flipped == reference.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    with pytest.raises(ValueError, match="uint8 images"):
        to_model_input(images.float())


def test_a_cut_metadata_jsonl_or_train_json_is_named_with_its_line(tmp_path, tmp_path_factory):
    """A file cut off in the middle of its last line: the file, the line and the parser's reason, not a missing column."""
    _write(tmp_path, "0.png")
    _write(tmp_path, "1.png")
    rows = [json.dumps({"file_name": "0.png", "labels": ["red sphere"]}), json.dumps({"file_name": "1.png", "labels": ["cyan cube"]})]
    (tmp_path / "metadata.jsonl").write_text(rows[0] + "\n" + rows[1][:20])
    with pytest.raises(BadDataError, match=r"metadata.jsonl:2: not valid JSON \(Unterminated string starting at: column 15\)"):
        load_train_dataset(train_data_dir=tmp_path, cache_dir=tmp_path_factory.mktemp("hf"))
    (tmp_path / "metadata.jsonl").write_text(rows[0] + "\n[1, 2]\n")
    with pytest.raises(BadDataError, match="metadata.jsonl:2: expected a JSON object"):
        load_train_dataset(train_data_dir=tmp_path, cache_dir=tmp_path_factory.mktemp("hf"))
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "train.json").write_text('{\n  "0.png": ["red sphere"],\n  "1.png": ["cyan')
    with pytest.raises(ValueError, match=r"train.json:3 is not valid JSON: Unterminated string starting at: line 3, column 13"):
        load_train_dataset(train_data_dir=tmp_path, cache_dir=tmp_path_factory.mktemp("hf"))
