import json
import textwrap

import numpy as np
import pytest
from diffusers import DDIMScheduler
from PIL import Image

from evaluate_pipeline import main, parse_args
from iclevr.evaluator import build_evaluator
from pipeline_iclevr import ICLEVRPipeline

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
