import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from evaluate_images import main as evaluate_images
from iclevr.data import dataset_to_tensors, load_train_dataset, split_by_scene
from iclevr.evaluator import (
    Evaluator,
    build_evaluator,
    convert_course_checkpoint,
    read_image_folder,
    reference_images,
    to_evaluator_input,
)
from pipeline_iclevr import LABELS

ROOT = Path(__file__).resolve().parents[1]


class _Block(nn.Module):
    """torchvision's BasicBlock, by its state-dict names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionLayoutResNet18(nn.Module):
    """The course evaluator: torchvision resnet18 with fc = Sequential(Linear(512, 24), Sigmoid())."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 64, 128, 256, 512]
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(_Block(widths[i - 1], widths[i], stride), _Block(widths[i], widths[i], 1)))
        self.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_course_checkpoint_converts_exactly(tmp_path):
    reference = _randomised(TorchvisionLayoutResNet18())
    torch.save({"model": reference.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    evaluator = Evaluator.from_pretrained(tmp_path / "checkpoint.pth")
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images * 2 - 1)
    torch.testing.assert_close(evaluator.predict(images), expected, atol=1e-5, rtol=1e-4)


def test_bad_checkpoints(tmp_path):
    state = TorchvisionLayoutResNet18().state_dict()
    state["fc.0.weight"] = torch.zeros(10, 512)
    state["fc.0.bias"] = torch.zeros(10)
    torch.save({"model": state}, tmp_path / "ten.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_course_checkpoint(tmp_path / "ten.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a course checkpoint"):
        convert_course_checkpoint(tmp_path / "list.pth")
    torch.save({"model": {"head.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="Unexpected key 'head.weight'"):
        convert_course_checkpoint(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="train_evaluator.py"):
        Evaluator.from_pretrained(tmp_path)


def test_save_load_round_trip(tmp_path):
    model = _randomised(build_evaluator())
    model.save_pretrained(tmp_path / "ev")
    assert (tmp_path / "ev" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["id2label"]["9"] == "red sphere"
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(Evaluator(model).predict(images), Evaluator.from_pretrained(tmp_path / "ev").predict(images))


def test_flip_average_is_saved_and_scores_the_mean_of_both_views(tmp_path):
    model = _randomised(build_evaluator())
    images = torch.rand(4, 3, 64, 64)
    plain = Evaluator(model)
    assert not plain.flip_average  # a model without the config entry (e.g. the course's) scores single-view
    mean = (plain.predict(images) + plain.predict(images.flip(-1))) / 2
    torch.testing.assert_close(Evaluator(model, flip_average=True).predict(images), mean)
    assert not torch.allclose(mean, plain.predict(images))
    symmetric = torch.cat([images[..., :32], images[..., :32].flip(-1)], dim=-1)
    torch.testing.assert_close(Evaluator(model, flip_average=True).predict(symmetric), plain.predict(symmetric))
    model.config.flip_average = True
    model.save_pretrained(tmp_path / "ev")
    loaded = Evaluator.from_pretrained(tmp_path / "ev")
    assert loaded.flip_average
    torch.testing.assert_close(loaded.predict(images), mean)


def test_input_forms_agree_and_upsample():
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    as_uint8 = to_evaluator_input(images)
    as_float = to_evaluator_input(images.permute(0, 3, 1, 2).float() / 255)
    as_pil = to_evaluator_input([Image.fromarray(image.numpy()) for image in images])
    assert as_uint8.shape == (2, 3, 64, 64) and as_uint8.min() >= -1 and as_uint8.max() <= 1
    torch.testing.assert_close(as_uint8, as_float)
    torch.testing.assert_close(as_uint8, as_pil)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 4, 64, 64), r"\(B, 3, H, W\) RGB"),
        (torch.randint(0, 255, (2, 64, 64, 1), dtype=torch.uint8), r"\(B, H, W, 3\) RGB"),
        (torch.rand(2, 3, 64, 48), "must be square"),
        (torch.rand(2, 3, 8, 8), "too small"),
        (torch.rand(2, 3, 64, 64) * 2 - 1, r"must be in \[0, 1\]"),
        (torch.rand(3, 64, 64), "Expected a batch"),
        ([], "No images"),
        ([torch.rand(3, 64, 64)], "PIL images"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "Unsupported image dtype"),
    ],
)
def test_bad_image_inputs(images, message):
    with pytest.raises(ValueError, match=message):
        to_evaluator_input(images)


def test_score_and_mismatched_counts():
    evaluator = Evaluator(_randomised(build_evaluator()))
    images = torch.rand(3, 3, 64, 64)
    report = evaluator.score(images, [["red sphere"], ["gray cube", "blue cube"], [1, 2, 3]])
    assert report["images"] == 3 and 0 <= report["accuracy"] <= 1 and set(report["by_num_objects"]) == {"1", "2", "3"}
    with pytest.raises(ValueError, match="3 images but 2 conditions"):
        evaluator.score(images, [["red sphere"], ["gray cube"]])
    with pytest.raises(ValueError, match="Unknown i-CLEVR label"):
        evaluator.score(images[:1], [["red spher"]])


def test_image_folder_checks(tmp_path):
    for i in range(3):
        Image.new("RGB", (64, 64), (i, i, i)).save(tmp_path / f"{i}.png")
    assert len(read_image_folder(tmp_path, 3)) == 3
    with pytest.raises(ValueError, match="3.png: file is missing"):
        read_image_folder(tmp_path, 4)
    with pytest.raises(ValueError, match="no condition refers to"):
        read_image_folder(tmp_path, 2)


def test_reference_images():
    conditions = [["red sphere"], ["gray cube", "cyan cylinder"]]
    floor, noise, rendered = (reference_images(conditions, kind) for kind in ("floor", "noise", "rendered"))
    assert floor.shape == noise.shape == rendered.shape == (2, 64, 64, 3) and floor.dtype == torch.uint8
    spread = floor.int().max(-1).values - floor.int().min(-1).values
    assert spread.max() <= 12 and torch.equal(floor[0], floor[1])  # an empty floor: grey, tinted by warm and cool lamps
    assert (rendered.int().max(-1).values - rendered.int().min(-1).values).max() > 60  # coloured objects
    with pytest.raises(ValueError, match="Unknown reference kind"):
        reference_images(conditions, "sky")


def test_cli_scores_a_folder(tmp_path, capsys):
    _randomised(build_evaluator()).save_pretrained(tmp_path / "ev")
    conditions = [["red sphere"], ["gray cube", "cyan cylinder"]]
    (tmp_path / "c.json").write_text(json.dumps(conditions))
    images = reference_images(conditions, "rendered")
    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.numpy()).save(tmp_path / "imgs" / f"{i}.png")
    result = evaluate_images(["--evaluator", str(tmp_path / "ev"), "--conditions_json", str(tmp_path / "c.json"),
                   "--images_dir", str(tmp_path / "imgs"), "--sanity", "--output_json", str(tmp_path / "m.json")])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["images"]["images"] == 2 and set(saved["sanity"]) == {"rendered", "floor", "noise"}
    assert saved["images"]["accuracy"] == result["images"]["accuracy"]
    assert '"accuracy"' in capsys.readouterr().out


def test_split_by_scene_and_tensors(rendered_dir, tmp_path):
    dataset = load_train_dataset(train_data_dir=rendered_dir, resolution=16, cache_dir=tmp_path)
    names = list(dataset["file_name"])
    train, heldout = split_by_scene(names, 0.4, seed=1)
    assert sorted(train + heldout) == list(range(len(names))) and train and heldout
    scene = lambda rows: {names[r].rsplit("_", 1)[0] for r in rows}  # noqa: E731
    assert not scene(train) & scene(heldout)
    assert split_by_scene(names, 0.4, seed=1) == (train, heldout)
    images, labels = dataset_to_tensors(dataset)
    assert images.dtype == torch.uint8 and images.shape == (24, 16, 16, 3) and labels.shape == (24, 24)
    with pytest.raises(ValueError, match="held-out fraction"):
        split_by_scene(names, 1.0)


def test_train_evaluator_smoke(rendered_dir, tmp_path):
    out = tmp_path / "ev"
    command = [sys.executable, str(ROOT / "train_evaluator.py"), "--train_data_dir", str(rendered_dir),
               "--output_dir", str(out), "--num_epochs", "1", "--train_batch_size", "8", "--heldout_fraction", "0.3",
               "--lr_warmup_steps", "1", "--report_to", "none", "--cache_dir", str(tmp_path / "cache"), "--flip_average"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=300)
    metrics = json.loads((out / "evaluator_metrics.json").read_text())
    assert set(metrics["heldout"]) == {"64", "32to64"} and set(metrics["sanity"]) == {"rendered", "floor", "noise"}
    assert metrics["flip_average"] and set(metrics["heldout_single_view"]) == {"64", "32to64"}
    assert metrics["train_images"] + metrics["heldout_images"] == 24
    evaluator = Evaluator.from_pretrained(out)
    assert evaluator.flip_average and evaluator.predict(torch.rand(1, 3, 64, 64)).shape == (1, 24)
    # the saved image processor lets transformers' own pipeline score an image as the evaluator does (one view)
    from transformers import pipeline

    image = Image.open(rendered_dir / "CLEVR_train_000000_2.png")
    scores = {r["label"]: r["score"] for r in pipeline("image-classification", model=str(out))(image, top_k=len(LABELS))}
    single = Evaluator(evaluator.model, flip_average=False).predict([image])[0]
    assert scores == pytest.approx({name: single[i].item() for i, name in enumerate(LABELS)}, abs=1e-5)


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_two_process_evaluator_training_gathers_heldout_figures_and_ends_its_schedule(rendered_dir, tmp_path):
    """Two CPU processes (gloo) each score half of the held-out images; the gathered figures must equal one process
    scoring all of them with the saved model. The cosine schedule spans the whole run with two processes too: it
    decays through the first epoch and reaches zero at the end, instead of ending halfway and climbing back."""
    from accelerate import Accelerator

    from iclevr.data import load_train_dataset
    from iclevr.evaluator import heldout_figures

    out = tmp_path / "ev2"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_evaluator.py"),
               "--train_data_dir", str(rendered_dir), "--output_dir", str(out), "--num_epochs", "2", "--train_batch_size", "2",
               "--heldout_fraction", "0.4", "--lr_warmup_steps", "1", "--report_to", "none", "--cache_dir", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "evaluator_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["heldout_images"] % 2 == 1  # an odd count: uneven shares
    peak = metrics["args"]["learning_rate"]
    first, last = (epoch["learning_rate"] for epoch in metrics["history"])
    assert 0.1 * peak < first < peak and last < 1e-6 * peak
    dataset = load_train_dataset(train_data_dir=rendered_dir, resolution=64, cache_dir=tmp_path / "cache")
    images, labels = dataset_to_tensors(dataset)
    _, heldout = split_by_scene(list(dataset["file_name"]), 0.4, 0)
    model = Evaluator.from_pretrained(out).model
    single = heldout_figures(model, images[heldout], labels[heldout], Accelerator(cpu=True))
    for size in ("64", "32to64"):
        assert single[size]["accuracy"] == pytest.approx(metrics["heldout"][size]["accuracy"], abs=1e-6)
        assert single[size]["by_num_objects"] == metrics["heldout"][size]["by_num_objects"]


def test_train_evaluator_bad_flags(capsys):
    from train_evaluator import parse_args

    for flags, message in ((["--lowres_sizes", "32,x"], "comma-separated"), (["--lowres_sizes", "128"], "must lie in"),
                           (["--heldout_fraction", "0"], "argument --heldout_fraction: expected a number in (0, 1)"), (["--num_epochs", "0"], "argument --num_epochs: expected a positive integer")):
        with pytest.raises(SystemExit):
            parse_args(flags)
        assert message in capsys.readouterr().err
