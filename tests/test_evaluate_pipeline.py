import json
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from evaluate_pipeline import main, parse_args
from iclevr.evaluator import build_evaluator
from pipeline_iclevr import ICLEVRPipeline, LabelVocabulary

from .test_pipeline import tiny_unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(root / "pipe")
    build_evaluator().save_pretrained(root / "evaluator")
    conditions = [["red sphere"], ["gray cube", "blue cube"], ["cyan cylinder", "red cube", "yellow sphere"]] * 3
    (root / "mini.json").write_text(json.dumps(conditions))
    return root


def test_report_end_to_end(saved, tmp_path):
    out = tmp_path / "report"
    metrics = main(["--pipeline", str(saved / "pipe"), "--evaluator", str(saved / "evaluator"), "--conditions_json",
                    str(saved / "mini.json"), "--output_dir", str(out), "--num_inference_steps", "2", "--num_seeds", "2",
                    "--batch_size", "4", "--sweep", "--sweep_steps", "1,2", "--sweep_guidance", "1,3"])
    result = metrics["sets"]["mini"]
    assert len(result["accuracy"]["values"]) == 2 and set(result["references"]) == {"rendered", "floor", "noise"}
    assert set(result["accuracy_by_num_objects"]) == {"1", "2", "3"}
    # every label missed over the two seeds (18 labels each) has a kind
    assert sum(result["misses"].values()) == round(sum(18 * (1 - a) for a in result["accuracy"]["values"]))
    assert sorted(p.name for p in (out / "images" / "mini").iterdir()) == sorted(f"{i}.png" for i in range(9))
    with Image.open(out / "grid_mini.png") as grid:  # 8 per row, like the course's reports; 16 px shown 6x, unsmoothed
        assert grid.size == (8 * 96, 2 * (96 + 3 * 12))  # each condition (up to 3 labels) written under its image
        cell = np.asarray(grid.crop((0, 0, 96, 96)))
        assert (cell[::6, ::6].repeat(6, 0).repeat(6, 1) == cell).all()
    with Image.open(out / "images" / "mini" / "0.png") as image:
        assert image.size == (16, 16)  # the saved images keep their true size
    with Image.open(out / "denoising.png") as figure:
        assert figure.width == 2 * 96  # one snapshot per step when there are fewer steps than 8 snapshots
        title = "red sphere, cyan cylinder, cyan cube: noise -> image (2 steps)"
        assert figure.height == 96 + 12 + 12 * len(textwrap.wrap(title, width=32)) + 2  # the title wrapped, not cut
    assert len(metrics["sweep"]) == 2 * 2 * 2 and (out / "sweep.png").is_file()
    report = (out / "report.md").read_text()
    assert "| mini |" in report and "![denoising](denoising.png)" in report and "## Sweep" in report
    assert report.count("Sampler DDIMScheduler, 2 steps") == 1  # by default the sampler the pipeline was saved with
    assert "Missed labels by kind" in report and "- mini: colour " in report
    assert json.loads((out / "metrics.json").read_text())["sets"]["mini"]["conditions"] == 9


def test_the_report_samples_with_the_pipeline_s_default_call(saved, tmp_path):
    """Without --num_inference_steps / --guidance_scale the report samples as the pipeline was validated: its config's
    default call, not constants of the report's own."""
    pipe = ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100), default_num_inference_steps=3,
                          default_guidance_scale=1.5)
    pipe.save_pretrained(tmp_path / "pipe")
    metrics = main(["--pipeline", str(tmp_path / "pipe"), "--evaluator", str(saved / "evaluator"), "--conditions_json",
                    str(saved / "mini.json"), "--output_dir", str(tmp_path / "report"), "--num_seeds", "1"])
    assert (metrics["args"]["num_inference_steps"], metrics["args"]["guidance_scale"]) == (3, 1.5)
    assert "Sampler DDIMScheduler, 3 steps, guidance 1.5" in (tmp_path / "report" / "report.md").read_text()


def test_bad_flags(saved, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--pipeline", "p", "--evaluator", "e", "--sweep_schedulers", "ddim,plms"])
    assert "unknown scheduler 'plms'" in capsys.readouterr().err


def test_slerp_keeps_the_ends_and_the_norm():
    import torch

    from iclevr.sampling import slerp

    a, b = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=1e-5)
    middle = slerp(a, b, 0.5)
    ratio = middle.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert ((ratio - 1).abs() < 0.05).all()  # a straight line's midpoint has about 0.71 of the norm
    assert (((a + b) / 2).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1) < 0.8).all()


def test_eta_and_interpolation_studies_in_the_report(saved, tmp_path):
    """The eta grid and the interpolation strip are written, scored and reported; eta 0 from the study's noises is
    the deterministic DDIM sample of those noises, and the interpolation's ends are the end noises' samples."""
    from evaluate_pipeline import ETAS, INTERPOLATION_POINTS
    from iclevr.sampling import initial_noise, load_pipeline

    out = tmp_path / "report"
    metrics = main(["--pipeline", str(saved / "pipe"), "--evaluator", str(saved / "evaluator"), "--conditions_json",
                    str(saved / "mini.json"), "--output_dir", str(out), "--num_inference_steps", "2", "--num_seeds", "2",
                    "--batch_size", "4", "--eta_study", "--interpolation_study", "--scheduler", "dpm++"])
    studies = metrics["studies"]
    assert [r["eta"] for r in studies["eta"]] == list(ETAS)
    assert all(len(r["accuracy"]["values"]) == 2 for r in studies["eta"])
    for path in ("slerp", "lerp"):
        assert [round(r["alpha"], 3) for r in studies["interpolation"][path]] == [round(i / 8, 3) for i in range(9)]
    # the two paths share their ends: the same noises, so the same images and the same accuracy
    assert studies["interpolation"]["slerp"][0]["accuracy"] == studies["interpolation"]["lerp"][0]["accuracy"]
    assert studies["interpolation"]["slerp"][-1]["accuracy"] == pytest.approx(studies["interpolation"]["lerp"][-1]["accuracy"])
    with Image.open(out / "eta.png") as grid:  # 8 conditions x 5 etas, 16 px shown 6x
        assert grid.width == 8 * 96 and grid.height > len(ETAS) * 96
        first_row = np.asarray(grid.crop((0, 0, 96, 96)))[::6, ::6]
    pipe = load_pipeline(str(saved / "pipe"), "ddim", "cpu")
    conditions = json.loads((saved / "mini.json").read_text())
    expected = pipe(conditions[:1], latents=initial_noise(pipe, len(conditions), 0)[:1], num_inference_steps=2,
                    output_type="np").images[0]
    assert np.abs(first_row.astype(int) - (expected * 255).round().astype(int)).max() <= 1
    with Image.open(out / "interpolation.png") as strip:
        assert strip.width == INTERPOLATION_POINTS * 96 and strip.height == 2 * (96 + 12)
    report = (out / "report.md").read_text()
    assert "## DDIM eta" in report and "![eta](eta.png)" in report and "| 0.5 |" in report
    assert "## Noise interpolation" in report and "| slerp |" in report and "| lerp |" in report
    assert "Sampler DPMSolverMultistepScheduler" in report and metrics["args"]["sampler"] == "DPMSolverMultistepScheduler"


class _KnowsOneLabel(torch.nn.Module):
    """A stand-in denoiser (x0-prediction) that recovers the clean image exactly when its condition holds ``label`` and
    predicts zeros otherwise: the lift of ``label`` is then the null error, every other label's lift 0."""

    def __init__(self, clean, label):
        super().__init__()
        self.clean, self.label = clean, label
        self.config = SimpleNamespace(class_embed_type="projection", projection_class_embeddings_input_dim=24,
                                      encoder_hid_dim_type=None)
        self.dtype = torch.float32

    def forward(self, sample, timestep, class_labels=None, encoder_hidden_states=None):
        knows = class_labels[:, self.label, None, None, None] > 0
        return SimpleNamespace(sample=torch.where(knows, self.clean.expand_as(sample), torch.zeros_like(sample)))


def test_lift_scores_measure_what_the_model_gains_from_each_label():
    from iclevr.sampling import lift_scores

    vocab = LabelVocabulary()
    image = torch.rand(1, 3, 8, 8)
    pipe = SimpleNamespace(unet=_KnowsOneLabel(image * 2 - 1, vocab.index("red sphere")), _execution_device="cpu",
                           scheduler=DDPMScheduler(num_train_timesteps=100, prediction_type="sample"),
                           config=SimpleNamespace(patch_size=1))
    conditions = vocab.encode_batch([["red sphere", "cyan cube"], ["cyan cube"]])
    lifts = lift_scores(pipe, image.expand(2, -1, -1, -1), conditions, num_timesteps=4)
    null_error = ((image * 2 - 1) ** 2).mean()
    assert lifts[0, vocab.index("red sphere")] == pytest.approx(null_error.item(), rel=1e-5)
    assert lifts[0, vocab.index("cyan cube")] == 0 and lifts[1, vocab.index("cyan cube")] == 0
    assert lifts.isnan().sum() == 2 * 24 - 3  # labels outside a condition have no lift


def test_best_of_keeps_the_candidate_whose_weakest_label_lifts_most(monkeypatch):
    import iclevr.sampling as sampling

    conditions = [["red sphere"], ["gray cube", "blue cube"]]
    pipe = SimpleNamespace(vocab=LabelVocabulary())
    # candidate k is filled with k / 10; its lifts: row 0 likes candidate 2, row 1's weakest label is best in candidate 1
    monkeypatch.setattr(sampling, "generate", lambda pipe, conds, seed, batch, **kw: (
        np.full((len(conds), 4, 4, 3), (seed // 1_000_000) / 10, dtype=np.float32), 0.0))
    wanted = {0: 2, 1: 1}

    def lifts(pipe, pixels, multi_hot, num_timesteps, seed):
        k = round(pixels[0, 0, 0, 0].item() * 10)
        out = torch.full(multi_hot.shape, float("nan"))
        for row in range(multi_hot.shape[0]):
            for label in multi_hot[row].nonzero().flatten().tolist():
                out[row, label] = (1.0 if k == wanted[row] else 0.0) + (5.0 if label == 2 else 0.0)  # label 2 never weakest
        return out

    monkeypatch.setattr(sampling, "lift_scores", lifts)
    images, seconds = sampling.generate_best_of(pipe, conditions, seed=0, batch_size=8, best_of=3)
    assert images[0, 0, 0, 0] == pytest.approx(0.2) and images[1, 0, 0, 0] == pytest.approx(0.1) and seconds >= 0


def test_best_of_in_the_report(saved, tmp_path):
    metrics = main(["--pipeline", str(saved / "pipe"), "--evaluator", str(saved / "evaluator"), "--conditions_json",
                    str(saved / "mini.json"), "--output_dir", str(tmp_path), "--num_inference_steps", "2", "--num_seeds", "1",
                    "--best_of", "2", "--lift_timesteps", "2"])
    assert metrics["args"]["best_of"] == 2 and len(metrics["sets"]["mini"]["accuracy"]["values"]) == 1
    assert "best of 2 candidates per condition by the model's lift score" in (tmp_path / "report.md").read_text()
