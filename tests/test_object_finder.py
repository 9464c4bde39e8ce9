"""The object finder and inferred layouts: its targets and decoding, the augmentations that move boxes with pixels,
training it, the shipped finder on fresh renders, and ``--layout_conditioning infer`` end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iclevr.augment import augment
from iclevr.data import dataset_to_tensors, load_train_dataset
from iclevr.labels import BadDataError
from iclevr.layouts import infer_layouts, layout_prior, read_layouts_file
from iclevr.object_finder import (
    ObjectFinder,
    box_iou,
    find_objects,
    finder_targets,
    heldout_box_figures,
    load_object_finder,
    shipped_object_finder,
)
from pipeline_iclevr import ICLEVRPipeline, LabelVocabulary

ROOT = Path(__file__).resolve().parents[1]
VOCAB = LabelVocabulary()
TINY_FINDER = {"hidden_sizes": [8, 8, 8], "head_channels": 8}
TINY_DDPM = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8",
             "--train_batch_size", "4", "--max_train_steps", "1", "--lr_warmup_steps", "0"]


class _Oracle(ObjectFinder):
    """A finder whose outputs are given: the targets of known layouts, as logits."""

    def set_outputs(self, heat, box_maps):
        self.outputs = (torch.logit(heat.clamp(1e-4, 1 - 1e-4)), box_maps)

    def forward(self, pixel_values):
        return self.outputs


def _layouts():
    boxes = torch.tensor([[[0.10, 0.20, 0.30, 0.42], [0.55, 0.50, 0.71, 0.83], [0, 0, 0, 0]],
                          [[0.40, 0.40, 0.52, 0.55], [0.41, 0.45, 0.60, 0.70], [0.05, 0.6, 0.2, 0.9]]])
    box_labels = torch.tensor([[3, 10, -1], [0, 23, 12]])
    conditions = torch.zeros(2, 24)
    for row, labels in enumerate(box_labels):
        conditions[row, labels[labels >= 0]] = 1
    return boxes, box_labels, conditions


def test_the_targets_decode_to_the_true_boxes():
    boxes, box_labels, conditions = _layouts()
    finder = _Oracle()
    finder.set_outputs(*finder_targets(boxes, box_labels, 24, 16)[:2])
    found = finder.find(torch.zeros(2, 3, 64, 64), conditions)
    assert found.box_labels.tolist() == [[3, 10, -1], [0, 12, 23]]  # each image's labels, in the vocabulary's order
    truth = torch.stack([boxes[0], boxes[1][[0, 2, 1]]])
    real = found.box_labels >= 0
    assert (box_iou(found.boxes, truth)[real] > 0.999).all()
    assert found.found.tolist() == real.tolist() and found.complete.tolist() == [True, True]


def test_an_object_below_the_threshold_is_not_found_and_its_layout_is_not_whole():
    boxes, box_labels, conditions = _layouts()
    heat, box_maps, _ = finder_targets(boxes, box_labels, 24, 16)
    heat[1, 23] *= 0.2  # the finder is unsure of image 1's label 23 (peak 0.2 < 0.3)
    finder = _Oracle(confidence_threshold=0.3)
    finder.set_outputs(heat, box_maps)
    found = finder.find(torch.zeros(2, 3, 64, 64), conditions)
    assert found.found.tolist() == [[True, True, False], [True, True, False]]
    assert found.confidence[1, 2] == pytest.approx(0.2, abs=1e-3)
    assert found.complete.tolist() == [True, False]


def test_augmentation_moves_the_boxes_with_the_pixels():
    """Bright squares on black, mirrored and scaled at random: the bright pixels stay inside their moved boxes, and
    the pixels are those the evaluator's augmentation draws with the same seed (boxes change nothing else)."""
    images = torch.zeros(64, 64, 64, 3, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    corner = torch.randint(4, 44, (64, 2), generator=generator)
    size = torch.randint(6, 16, (64,), generator=generator)
    for i in range(64):
        (x, y), s = corner[i].tolist(), int(size[i])
        images[i, y:y + s, x:x + s] = 255
    boxes = torch.stack([corner[:, 0], corner[:, 1], corner[:, 0] + size, corner[:, 1] + size], -1)[:, None].float() / 64
    pixels, moved = augment(images, torch.Generator().manual_seed(1), 0.0, [32], True, True, boxes=boxes)
    alone = augment(images, torch.Generator().manual_seed(1), 0.0, [32], True, True)
    assert torch.equal(pixels, alone)
    assert not torch.equal(moved, boxes)  # some were mirrored or scaled
    bright = (pixels.float() + 1).mean(1) > 1.0  # (B, H, W): above mid-grey
    for i in range(64):
        rows, cols = bright[i].nonzero(as_tuple=True)
        seen = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float() / 64
        assert (seen - moved[i, 0]).abs().max() <= 2.5 / 64, (i, seen, moved[i, 0])


def test_a_null_layout_trains_without_a_map_and_stays_out_of_the_prior(rendered_dir, tmp_path):
    train = json.loads((rendered_dir / "train.json").read_text())
    names = sorted(train)
    labels = torch.stack([VOCAB.encode(train[n]) for n in names])
    layouts = json.loads((rendered_dir / "layouts.json").read_text())
    layouts[names[1]] = None
    (tmp_path / "layouts.json").write_text(json.dumps(layouts))
    boxes, box_labels = read_layouts_file(tmp_path, names, labels, VOCAB)
    assert (box_labels[1] < 0).all() and ((box_labels[0] >= 0).sum() == labels[0].sum())
    prior = layout_prior(boxes, box_labels, 100, 0)
    assert "0" not in prior and sum(len(v) for v in prior.values()) == len(names) - 1


def _train_finder(data, out, *extra):
    command = [sys.executable, str(ROOT / "train_object_finder.py"), "--train_data_dir", str(data), "--output_dir", str(out),
               "--num_epochs", "1", "--train_batch_size", "8", "--heldout_fraction", "0.3", "--lr_warmup_steps", "1",
               "--hidden_sizes", "8,8,8", "--report_to", "none", "--cache_dir", str(out.parent / "cache"), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_object_finder_saves_a_finder_that_loads(rendered_dir, tmp_path):
    out = tmp_path / "finder"
    result = _train_finder(rendered_dir, out, "--save_dtype", "float16")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "finder_metrics.json").read_text())
    assert metrics["train_images"] + metrics["heldout_images"] == 24
    heldout = metrics["heldout"]
    assert heldout["objects"] > 0 and 0 <= heldout["iou_at_least_0.7"] <= heldout["found"] + 1e-9 <= 1 + 1e-9
    assert set(heldout["by_num_objects"]) <= {"1", "2", "3"} and len(metrics["history"]) == 1
    finder = ObjectFinder.from_pretrained(out)
    assert finder.config.hidden_sizes == [8, 8, 8] and finder.vocab.labels == VOCAB.labels
    found = find_objects(finder, torch.zeros(3, 32, 32, 3, dtype=torch.uint8), VOCAB.read([["red sphere"], ["red cube", "blue cube"], [3]]))
    ids = VOCAB.label2id
    assert found.boxes.shape == (3, 2, 4)
    assert found.box_labels.tolist() == [[ids["red sphere"], -1], sorted([ids["red cube"], ids["blue cube"]]), [3, -1]]


def test_train_object_finder_refuses_data_without_layouts(rendered_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(rendered_dir, data)
    (data / "layouts.json").unlink()
    result = _train_finder(data, tmp_path / "finder")
    assert result.returncode != 0 and "layouts.json does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "finder" / "diffusion_pytorch_model.safetensors").exists()


def test_layout_conditioning_infer_trains_a_layout_model_from_labels_alone(rendered_dir, tmp_path):
    """A course-style folder without layouts.json: the finder's boxes are written to the cache (never the folder),
    images it is unsure of train without a map, the log counts whole layouts, and the saved pipeline's prior holds
    the inferred boxes."""
    data = tmp_path / "data"
    shutil.copytree(rendered_dir, data)
    (data / "layouts.json").unlink()
    before = sorted(p.name for p in data.iterdir())
    dataset = load_train_dataset(train_data_dir=data, resolution=16, cache_dir=tmp_path / "cache")  # as the trainer reads it
    images, labels = dataset_to_tensors(dataset)
    names = list(dataset["file_name"])
    torch.manual_seed(0)
    finder = ObjectFinder(**TINY_FINDER)  # untrained: its peaks differ per image; the threshold splits them
    found = find_objects(finder, images, labels)
    weakest = found.confidence.masked_fill(found.box_labels < 0, 1).amin(1)  # each image's least sure object
    threshold = float(weakest.median())
    finder.register_to_config(confidence_threshold=threshold)
    finder.save_pretrained(tmp_path / "finder")
    whole = int((weakest >= threshold).sum())
    assert 0 < whole < len(names)

    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "train_conditional_ddpm.py"), "--train_data_dir", str(data),
                             "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--layout_conditioning", "infer",
                             "--object_finder", str(tmp_path / "finder"), *TINY_DDPM], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{whole} of {len(names)} images have a whole layout" in result.stderr
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written into the user's folder
    (inferred,) = (tmp_path / "cache").glob("inferred-layouts-*/layouts.json")
    layouts = json.loads(inferred.read_text())
    assert sum(layout is not None for layout in layouts.values()) == whole
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 3 + 24
    index = json.loads((out / "model_index.json").read_text())
    boxes = {json.dumps(item["box"]) for layout in layouts.values() if layout for item in layout}
    assert {json.dumps(box) for group in index["layout_prior"].values() for layout in group for box in layout} <= boxes
    assert "object finder" in (out / "README.md").read_text()
    assert ICLEVRPipeline.from_pretrained(out).uses_layouts

    # the same finder and data infer once: a second call reads the cached file
    folder, summary = infer_layouts(tmp_path / "finder", images, labels, names, VOCAB, tmp_path / "cache")
    assert folder == inferred.parent and summary["whole_layouts"] == whole


def test_infer_needs_a_finder_of_the_datas_vocabulary(tmp_path):
    ObjectFinder(labels=["red thing", "blue thing"], **TINY_FINDER).save_pretrained(tmp_path / "finder")
    with pytest.raises(ValueError, match="train a finder on renders of the data's vocabulary"):
        infer_layouts(tmp_path / "finder", torch.zeros(1, 64, 64, 3, dtype=torch.uint8), VOCAB.read([["red sphere"]]), ["a.png"],
                      VOCAB, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="No object finder"):
        infer_layouts(tmp_path / "nothing", torch.zeros(1, 64, 64, 3, dtype=torch.uint8), VOCAB.read([["red sphere"]]), ["a.png"],
                      VOCAB, tmp_path / "cache")


@pytest.mark.parametrize("flags, message", [
    (["--object_finder", "x"], "--object_finder is read only with --layout_conditioning infer"),
])
def test_object_finder_flags_are_checked(flags, message, capsys):
    from iclevr.ddpm import parse_args

    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


def test_a_bad_layouts_file_still_names_null_as_the_way_to_say_unknown(rendered_dir, tmp_path):
    train = json.loads((rendered_dir / "train.json").read_text())
    names = sorted(train)
    labels = torch.stack([VOCAB.encode(train[n]) for n in names])
    (tmp_path / "layouts.json").write_text(json.dumps({names[0]: [{"label": "red sphere", "box": [0.5, 0.5, 0.4, 0.9]}]}))
    with pytest.raises(BadDataError, match="or null where it is unknown"):
        read_layouts_file(tmp_path, names, labels, VOCAB)


@pytest.mark.skipif(shipped_object_finder() is None, reason="the shipped object finder is not in this checkout")
def test_the_shipped_finder_finds_the_boxes_of_fresh_renders(tmp_path):
    """Renders it never saw (another seed than its training set's): IoU >= 0.7 for at least 90 % of the objects
    (docs/experiments.md gives the full held-out figure)."""
    from iclevr.render.dataset import plan_random_scenes, render_dataset

    data = tmp_path / "fresh"
    render_dataset(data, plan_random_scenes(24, 12345, set()), seed=12345, width=64, height=64, spp=4)
    dataset = load_train_dataset(train_data_dir=data, resolution=64, cache_dir=tmp_path / "cache")
    images, labels = dataset_to_tensors(dataset)
    boxes, box_labels = read_layouts_file(data, list(dataset["file_name"]), labels, VOCAB)
    figures = heldout_box_figures(load_object_finder(shipped_object_finder()), images, labels, boxes, box_labels)
    assert figures["objects"] == 144 and figures["iou_at_least_0.7"] >= 0.9, figures


def test_random_boxes_keep_their_size_inside_the_image():
    from iclevr.finder_check import random_boxes

    boxes = torch.tensor([[0.25, 0.5, 0.5, 0.75], [0.0, 0.0, 0.1, 0.1]]).repeat(50, 1, 1)  # (50, 2, 4)
    moved = random_boxes(boxes, torch.Generator().manual_seed(0))
    assert moved.shape == boxes.shape and torch.allclose(moved[..., 2:] - moved[..., :2], boxes[..., 2:] - boxes[..., :2])
    assert (moved >= 0).all() and (moved <= 1 + 1e-6).all() and moved[..., 0].std() > 0.1


def test_the_crop_test_reads_a_panel(tmp_path, capsys):
    """A two-set panel of renders: the CLI prints a row per set and writes the figures, each a share in [0, 1]."""
    from PIL import Image

    from iclevr.evaluator import build_evaluator, reference_images
    from iclevr.finder_check import main

    for name in ("test", "new_test"):
        folder = tmp_path / "panel" / "someone" / name
        folder.mkdir(parents=True)
        conditions = json.loads((ROOT / "iclevr" / "conditions" / f"{name}.json").read_text())[:4]
        (tmp_path / "panel" / f"{name}.json").write_text(json.dumps(conditions))
        for i, image in enumerate(reference_images(conditions, "rendered")):
            Image.fromarray(image.numpy()).save(folder / f"{i}.png")
    (tmp_path / "panel" / "manifest.json").write_text(json.dumps({"entries": [{"folder": "someone", "reported": {"test": 0.5, "new_test": 0.5}}]}))
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    ObjectFinder(**TINY_FINDER).save_pretrained(tmp_path / "finder")
    result = main(["--panel_dir", str(tmp_path / "panel"), "--object_finder", str(tmp_path / "finder"), "--evaluator",
                   str(tmp_path / "evaluator"), "--output_json", str(tmp_path / "crops.json")])
    printed = capsys.readouterr().out
    assert "| someone test |" in printed and "| someone new_test |" in printed and "| **all** |" in printed
    assert json.loads((tmp_path / "crops.json").read_text()) == result
    assert result["objects"] == sum(len(c) for name in ("test", "new_test") for c in json.loads((tmp_path / "panel" / f"{name}.json").read_text()))
    assert all(0 <= result[key] <= 1 for key in ("found", "finder_boxes", "random_boxes"))
