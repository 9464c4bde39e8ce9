"""The panel: other models' i-CLEVR pictures read beside the course evaluator's figures, each set in its author's
metric, through `iclevr.panel`, `evaluate_images.py --panel_dir` and the report."""

import json

import pytest
import torch
from PIL import Image

import evaluate_images
from evaluate_pipeline import main as report_main
from iclevr.evaluator import build_evaluator, reference_images
from iclevr.panel import panel_accuracy, read_manifest, read_panel
from pipeline_iclevr import LabelVocabulary

CONDITIONS = [["red sphere"], ["gray cube", "blue cylinder", "cyan sphere"]]


class ScriptedEvaluator:
    """Reads image i as the scores given for it: the panel's arithmetic, without a network."""

    def __init__(self, scores):
        self.vocab, self.scores = LabelVocabulary(), scores

    def predict(self, images):
        return self.scores[: len(images)]


def _panel(root, entries, images=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "twoset.json").write_text(json.dumps(CONDITIONS))
    (root / "manifest.json").write_text(json.dumps({"entries": entries}))
    images = images if images is not None else [Image.new("RGB", (64, 64), (120, 120, 120))] * len(CONDITIONS)
    for entry in entries:
        folder = root / entry["folder"] / "twoset"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(folder / f"{i}.png")
    return root


def test_each_set_is_read_in_its_authors_metric(tmp_path):
    """Image 0 (1 label) read right, image 1 (3 labels) one of three: pooled 2/4, the mean of per-image calls 2/3."""
    vocab = LabelVocabulary()
    scores = torch.zeros(2, 24)
    scores[0, vocab.label2id["red sphere"]] = 0.9
    scores[1, vocab.label2id["gray cube"]] = 0.9
    scores[1, vocab.label2id["blue cube"]] = 0.8  # the blue cylinder drawn as a cube: a shape miss
    scores[1, vocab.label2id["red sphere"]] = 0.7  # the cyan sphere drawn red: a colour miss
    panel = _panel(tmp_path / "panel", [{"folder": "a", "reported": {"twoset": 0.75}, "metric": "pooled"},
                                        {"folder": "b", "reported": {"twoset": 0.75}, "metric": "per_image_mean"}])
    result = read_panel(ScriptedEvaluator(scores), panel)
    pooled, mean = result["rows"]
    assert pooled["ours"] == pytest.approx(0.5) and pooled["gap"] == pytest.approx(-0.25)
    assert mean["ours"] == pytest.approx(2 / 3) and mean["gap"] == pytest.approx(2 / 3 - 0.75)
    assert result["mean_abs_gap"] == pytest.approx((0.25 + 0.75 - 2 / 3) / 2) and result["max_abs_gap"] == pytest.approx(0.25)
    assert pooled["misses"] == {"colour": 1, "shape": 1, "object": 0}
    assert panel_accuracy([1, 1], [1, 3], "pooled") == 0.5


def test_bad_manifests_are_named(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"entries": [{"folder": "a", "reported": {"x": 1}, "metric": "median"}]}))
    with pytest.raises(ValueError, match="metric 'median'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([]))
    with pytest.raises(ValueError, match="non-empty 'entries' list"):
        read_manifest(tmp_path)


def test_the_cli_and_the_report_read_a_panel(tmp_path):
    """A panel of the renderer's own pictures of the two conditions, read by an (untrained) evaluator: the CLI prints
    the table and the report gains its Panel section; figures in [0, 1], the gap to the reported figure exact."""
    from diffusers import DDIMScheduler

    from pipeline_iclevr import ICLEVRPipeline

    from .test_pipeline import tiny_unet

    images = [Image.fromarray(a.numpy()) for a in reference_images(CONDITIONS, "rendered")]
    panel = _panel(tmp_path / "panel", [{"folder": "m", "reported": {"twoset": 0.9}, "metric": "pooled"}], images)
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    result = evaluate_images.main(["--evaluator", str(tmp_path / "evaluator"), "--panel_dir", str(panel),
                                   "--output_json", str(tmp_path / "out.json")])
    row = result["panel"]["rows"][0]
    assert row["folder"] == "m" and 0 <= row["ours"] <= 1 and row["gap"] == pytest.approx(row["ours"] - 0.9)
    assert json.loads((tmp_path / "out.json").read_text())["panel"]["rows"][0]["ours"] == row["ours"]
    ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "pipe")
    (tmp_path / "one.json").write_text(json.dumps([["red sphere"]]))
    metrics = report_main(["--pipeline", str(tmp_path / "pipe"), "--evaluator", str(tmp_path / "evaluator"), "--conditions_json",
                           str(tmp_path / "one.json"), "--output_dir", str(tmp_path / "report"), "--num_inference_steps", "1",
                           "--num_seeds", "1", "--panel_dir", str(panel)])
    assert metrics["panel"]["rows"][0]["ours"] == pytest.approx(row["ours"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Panel" in report and "| m twoset | pooled | 0.900 |" in report


def test_a_folder_without_a_manifest_is_refused(tmp_path, capsys):
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    with pytest.raises(SystemExit):
        evaluate_images.parse_args(["--evaluator", str(tmp_path / "evaluator"), "--panel_dir", str(tmp_path)])
    assert "has no manifest.json" in capsys.readouterr().err
