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
    assert "Missed labels by kind" in report and "- mini: colour " in report
    assert json.loads((out / "metrics.json").read_text())["sets"]["mini"]["conditions"] == 9


def test_bad_flags(saved, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--pipeline", "p", "--evaluator", "e", "--sweep_schedulers", "ddim,plms"])
    assert "unknown scheduler 'plms'" in capsys.readouterr().err
