import json

import pytest
import torch
from diffusers import AutoencoderKL

import train_autoencoder
from iclevr_data import to_model_input
from iclevr_utils import encode_latents, vae_scale_factor

TINY = ["--resolution", "16", "--block_out_channels", "8,8", "--train_batch_size", "4", "--lr_warmup_steps", "1",
        "--heldout_fraction", "0.3", "--seed", "1"]


@pytest.fixture(scope="module")
def trained_vae(rendered_dir, tmp_path_factory):
    from iclevr_evaluator import build_evaluator

    root = tmp_path_factory.mktemp("vae")
    build_evaluator().save_pretrained(root / "evaluator")
    result = train_autoencoder.main(["--train_data_dir", str(rendered_dir), "--cache_dir", str(root / "cache"), "--output_dir",
                                     str(root / "vae"), "--max_train_steps", "4", "--evaluator", str(root / "evaluator"), *TINY])
    return root / "vae", result


def test_autoencoder_run_saves_a_loadable_model_and_its_figures(trained_vae, rendered_dir):
    folder, result = trained_vae
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "autoencoder_metrics.json", "reconstructions.png"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "autoencoder_metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["latent_shape"] == [4, 8, 8]
    heldout = metrics["heldout"]
    assert heldout["mse"] > 0 and 0 <= heldout["accuracy"] <= 1 and 0 <= heldout["accuracy_originals"] <= 1
    vae = AutoencoderKL.from_pretrained(folder)
    assert vae_scale_factor(vae) == 2 and vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])


def test_scaling_factor_gives_unit_variance_latents(trained_vae):
    folder, _ = trained_vae
    vae = AutoencoderKL.from_pretrained(folder)
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8)
    vae.register_to_config(scaling_factor=1.0)
    factor = train_autoencoder.set_scaling_factor(vae, images)
    assert factor != 1.0 and vae.config.scaling_factor == factor
    assert encode_latents(vae, to_model_input(images)).std().item() == pytest.approx(1.0, rel=1e-4)


def test_autoencoder_learns_to_reconstruct(rendered_dir, tmp_path):
    """More steps must lower the held-out reconstruction error: the loss trains the model it should."""
    common = ["--train_data_dir", str(rendered_dir), "--cache_dir", str(tmp_path / "cache"), *TINY, "--learning_rate", "3e-3"]
    short = train_autoencoder.main([*common, "--output_dir", str(tmp_path / "a"), "--max_train_steps", "1"])
    longer = train_autoencoder.main([*common, "--output_dir", str(tmp_path / "b"), "--max_train_steps", "60"])
    assert longer["heldout"]["mse"] < 0.7 * short["heldout"]["mse"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "18", "--block_out_channels", "8,8,8"], "must be divisible by 4"),
        (["--block_out_channels", "6,10"], "GroupNorm"),
        (["--max_train_minutes", "0"], "must be positive"),
        (["--evaluator", "/nonexistent"], "does not exist"),
        (["--kl_weight", "-1"], "must be >= 0"),
    ],
)
def test_bad_flags_fail_before_work(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        train_autoencoder.parse_args(["--output_dir", str(tmp_path / "never"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
