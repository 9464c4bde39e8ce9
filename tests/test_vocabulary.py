"""A label vocabulary from the data: objects.json, ClassLabel names or the names used, through training, the evaluator,
the metrics and the report; and the digits dataset trained end to end with its own 10 labels."""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from iclevr.data import load_train_dataset
from iclevr.digits import DIGIT_NAMES, write_digits_dataset
from iclevr.evaluator import Evaluator, build_evaluator, sanity_report
from iclevr.labels import BadDataError, dataset_vocabulary, vocabulary_from_names, vocabulary_from_objects_json
from pipeline_iclevr import LABELS, ICLEVRPipeline, LabelVocabulary

from .conftest import accelerate_launch, run_ok

ROOT = Path(__file__).resolve().parents[1]


def _json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_objects_json_names_the_vocabulary(tmp_path):
    own = vocabulary_from_objects_json(_json(tmp_path / "a.json", {"Dog": 1, "cat": 0, "red_bird": 2}))
    assert own.labels == ("cat", "dog", "red bird")  # normalised names, in index order
    assert vocabulary_from_objects_json(_json(tmp_path / "b.json", {n: i for i, n in enumerate(LABELS)})).labels == LABELS
    swapped = {n: i for i, n in enumerate(LABELS)} | {"gray cube": 1, "red cube": 0}
    with pytest.raises(ValueError, match="course order gives 0"):  # i-CLEVR's names keep the course's order
        vocabulary_from_objects_json(_json(tmp_path / "c.json", swapped))
    typo = {("red sphear" if n == "red sphere" else n): i for i, n in enumerate(LABELS)}
    with pytest.raises(ValueError, match="unknown label 'red sphear'"):  # mostly i-CLEVR: a typo, not a new label
        vocabulary_from_objects_json(_json(tmp_path / "d.json", typo))
    with pytest.raises(BadDataError, match="integers 0..1, each used once"):
        vocabulary_from_objects_json(_json(tmp_path / "e.json", {"cat": 0, "dog": 5}))


def test_names_the_data_uses():
    assert vocabulary_from_names(["red sphere", "Cyan Cube"]).labels == LABELS  # i-CLEVR data: all 24, course order
    assert vocabulary_from_names(["red sphere", "red sphear"]).labels == LABELS  # the typo then fails with a hint
    assert vocabulary_from_names(["red spere"]).labels == LABELS  # a misspelt i-CLEVR label is no vocabulary of its own
    assert vocabulary_from_names(["two", "One", "two"]).labels == ("one", "two")


def _single_label_folder(folder, labels, objects=None):
    folder.mkdir()
    lines = []
    for i, label in enumerate(labels):
        Image.new("RGB", (16, 16), (40 * i % 256, 90, 200)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "labels": label}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    if objects is not None:
        _json(folder / "objects.json", objects)
    return folder


def test_an_image_folder_brings_its_own_labels(tmp_path):
    folder = _single_label_folder(tmp_path / "pets", ["dog", "cat", "Cat", "bird"])  # one name per row, not a list
    dataset = load_train_dataset(train_data_dir=folder, resolution=8, cache_dir=tmp_path / "cache")
    vocab = dataset_vocabulary(dataset)
    assert vocab.labels == ("bird", "cat", "dog")
    assert dataset["labels"][0] == [0.0, 0.0, 1.0] and dataset["labels"][2] == [0.0, 1.0, 0.0]
    assert dataset["label_names"][:3] == [["dog"], ["cat"], ["cat"]]
    lists = _single_label_folder(tmp_path / "lists", [["dog", "cat"], ["bird"]])  # multi-label rows
    assert load_train_dataset(train_data_dir=lists, resolution=8, cache_dir=tmp_path / "cache")["labels"][0] == [0.0, 1.0, 1.0]
    ordered = _single_label_folder(tmp_path / "ordered", ["dog", "cat"], objects={"dog": 0, "cat": 1, "fish": 2})
    vocab = dataset_vocabulary(load_train_dataset(train_data_dir=ordered, resolution=8, cache_dir=tmp_path / "cache"))
    assert vocab.labels == ("dog", "cat", "fish")  # objects.json: its order, and labels the data may not use yet
    wrong = _single_label_folder(tmp_path / "wrong", ["dog", "cow"], objects={"dog": 0, "cat": 1})
    with pytest.raises(BadDataError, match="row 1: Unknown label 'cow'"):
        load_train_dataset(train_data_dir=wrong, resolution=8, cache_dir=tmp_path / "cache")


def test_class_label_names_are_the_vocabulary(tmp_path):
    """A Hub-style dataset (here a local parquet one) whose label column is a ClassLabel: its names, in its order."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["tulip", "rose", "daisy"])})
    images = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    (tmp_path / "hub").mkdir()
    Dataset.from_dict({"image": images, "label": [2, 0, 1]}, features=features).to_parquet(tmp_path / "hub" / "train.parquet")
    dataset = load_train_dataset(dataset_name=str(tmp_path / "hub"), resolution=8, label_column="label", cache_dir=tmp_path / "c")
    assert dataset_vocabulary(dataset).labels == ("tulip", "rose", "daisy")
    assert dataset["label_names"] == [["daisy"], ["tulip"], ["rose"]]


def test_iclevr_data_keeps_the_course_vocabulary(rendered_dir, tmp_path):
    dataset = load_train_dataset(train_data_dir=rendered_dir, resolution=16, cache_dir=tmp_path)
    assert dataset_vocabulary(dataset).labels == LABELS


def test_evaluator_metrics_and_references_follow_the_vocabulary():
    vocab = LabelVocabulary({name: i for i, name in enumerate(DIGIT_NAMES)})
    model = build_evaluator(vocab)
    assert model.config.num_labels == 10 and model.config.id2label[7] == "seven"
    evaluator = Evaluator(model)
    assert evaluator.vocab.labels == DIGIT_NAMES
    report = evaluator.score(torch.rand(4, 3, 32, 32), [["one"], ["two"], ["seven"], ["nine"]])
    assert set(report["per_label"]) == set(DIGIT_NAMES) and report["misses"]["colour"] == report["misses"]["shape"] == 0
    with pytest.raises(ValueError, match="Unknown label 'sevn'. Did you mean 'seven'"):
        evaluator.score(torch.rand(1, 3, 32, 32), [["sevn"]])
    assert set(sanity_report(evaluator, [["one"], ["two"]])) == {"noise"}  # the renderer draws i-CLEVR only
    assert Evaluator(build_evaluator()).vocab.labels == LABELS


def test_digits_folder(tmp_path):
    folder = write_digits_dataset(tmp_path / "digits", resolution=16, conditions_per_label=2, limit=30)
    assert len(list(folder.glob("*.png"))) == 30
    assert json.loads((folder / "objects.json").read_text()) == {name: i for i, name in enumerate(DIGIT_NAMES)}
    assert json.loads((folder / "conditions.json").read_text())[:3] == [["zero"], ["zero"], ["one"]]
    image = Image.open(folder / "0000.png")
    assert image.mode == "RGB" and image.size == (16, 16)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_digits_dataset(folder)


def _run(*command):
    return run_ok([sys.executable, *command])


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_digits_end_to_end(tmp_path):
    """The same trainer, an evaluator trained the same way, and the report, on 60 digits with their own 10 labels."""
    data = write_digits_dataset(tmp_path / "digits", resolution=16, conditions_per_label=1, limit=60)
    common = ["--train_data_dir", str(data), "--cache_dir", str(tmp_path / "cache"), "--report_to", "none"]
    _run(*accelerate_launch("train_conditional_ddpm.py")[1:], *common, "--output_dir", str(tmp_path / "ddpm"),
         "--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8", "--train_batch_size", "8",
         "--max_train_steps", "3", "--lr_warmup_steps", "1", "--validation_steps", "3", "--validation_inference_steps", "2",
         "--validation_conditions_json", str(data / "conditions.json"))
    _run("train_evaluator.py", *common, "--output_dir", str(tmp_path / "evaluator"), "--num_epochs", "1",
         "--train_batch_size", "16", "--heldout_fraction", "0.2", "--no-random_flip")
    _run("evaluate_pipeline.py", "--pipeline", str(tmp_path / "ddpm"), "--evaluator", str(tmp_path / "evaluator"),
         "--conditions_json", str(data / "conditions.json"), "--output_dir", str(tmp_path / "report"), "--num_seeds", "1",
         "--num_inference_steps", "2")

    pipe = ICLEVRPipeline.from_pretrained(tmp_path / "ddpm")
    assert pipe.vocab.labels == DIGIT_NAMES and pipe.unet.config.projection_class_embeddings_input_dim == 10
    pipe.set_progress_bar_config(disable=True)
    assert pipe([["seven"], ["three"]], num_inference_steps=2, output_type="np").images.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="Unknown label 'sevn'. Did you mean 'seven'"):
        pipe([["sevn"]], num_inference_steps=2)
    evaluator_config = json.loads((tmp_path / "evaluator" / "config.json").read_text())
    assert evaluator_config["id2label"]["9"] == "nine" and not evaluator_config["flip_average"]
    assert json.loads((tmp_path / "evaluator" / "evaluator_metrics.json").read_text())["args"]["random_flip"] is False
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    result = metrics["sets"]["conditions"]
    assert result["conditions"] == 10 and 0 <= result["accuracy"]["mean"] <= 1
    assert set(result["references"]) == {"noise"} and result["misses"]["colour"] == result["misses"]["shape"] == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| conditions |" in report and "n/a" in report
    card = (tmp_path / "ddpm" / "README.md").read_text()
    assert "images with 10 labels (zero, one, two, three, four, five, ...)" in card and '[["zero"], ["nine"]]' in card
    assert "i-clevr" not in card.lower().split("---")[1]  # no i-CLEVR dataset or tag in the metadata
    record = json.loads((tmp_path / "ddpm" / "validation" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 3 and "accuracy" not in record  # no --evaluator: a grid, no score
