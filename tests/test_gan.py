"""The conditional GAN baseline: its trainer under accelerate launch, exact resume, its pipeline, and its report."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iclevr import gan
from iclevr.sampling import initial_noise, load_pipeline
from pipeline_iclevr import LabelVocabulary
from pipeline_iclevr_gan import ConditionalGenerator, ICLEVRGANPipeline

from .conftest import accelerate_launch, run_ok

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "16", "--generator_channels", "16,16,8", "--discriminator_channels", "8,16", "--latent_dim", "8",
        "--train_batch_size", "4", "--seed", "2", "--report_to", "none"]


def _launch(rendered_dir, output_dir, *flags, processes=1, timeout=300):
    command = accelerate_launch(ROOT / "train_conditional_gan.py", processes) + [
        "--train_data_dir", str(rendered_dir), "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        *TINY, *flags]
    return run_ok(command, timeout)


def _generator_weights(folder):
    return load_file(Path(folder) / "gan" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def trained(rendered_dir, tmp_path_factory):
    """4 generator steps (8 discriminator steps) with EMA, checkpoints every 2, validation every 2 with 2 seeds."""
    from iclevr.evaluator import build_evaluator

    out = tmp_path_factory.mktemp("gan") / "out"
    build_evaluator().save_pretrained(out.parent / "evaluator")
    _launch(rendered_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "2", "--use_ema", "--validation_steps", "2",
            "--validation_num_seeds", "2", "--evaluator", str(out.parent / "evaluator"), "--discriminator_head", "both")
    return out


def test_launch_saves_a_generator_pipeline(trained):
    for name in ("model_index.json", "gan/config.json", "gan/diffusion_pytorch_model.safetensors",
                 "pipeline_iclevr.py", "gan/pipeline_iclevr.py", "samples.png", "train_summary.json"):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    records = [json.loads(line) for line in (trained / "validation" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(len(r["accuracy_per_seed"]) == 2 for r in records)
    summary = json.loads((trained / "train_summary.json").read_text())
    # a step is a generator update on one batch after two discriminator updates on two batches
    assert summary["steps"] == 4 and summary["images_seen"] == 4 * 2 * 4 and summary["discriminator_head"] == "both"
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    (result,) = card.data.eval_results
    assert "gan" in card.data.tags and card.data.inference is False and card.data.datasets == ["i-clevr"]
    assert result.metric_value == round(records[-1]["accuracy"], 4) and "one-step GAN generator" in result.metric_name
    assert "# i-CLEVR conditional GAN" in card.text and "(both head)" in card.text and "| final generator loss |" in card.text
    pipe = ICLEVRGANPipeline.from_pretrained(trained)
    images = pipe([["red sphere"], ["gray cube", "blue cylinder"]], output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.min() >= 0 and images.max() <= 1


def test_saved_generator_loads_as_remote_code_and_samples_alike(trained):
    from diffusers import DiffusionPipeline

    remote = DiffusionPipeline.from_pretrained(trained, trust_remote_code=True)
    local = ICLEVRGANPipeline.from_pretrained(trained)
    assert type(remote).__name__ == "ICLEVRGANPipeline" and type(remote) is not ICLEVRGANPipeline
    conditions = [["red sphere", "cyan cube"], ["yellow cylinder"]]
    a = remote(conditions, generator=torch.Generator().manual_seed(5), output_type="pt").images
    b = local(conditions, generator=torch.Generator().manual_seed(5), output_type="pt").images
    torch.testing.assert_close(a, b)


def test_the_gan_trainer_never_compiles(tmp_path, monkeypatch):
    """Compiled, the discriminator's spectral norm fails in backward (in-place power iteration), so the GAN trainer has
    no --dynamo_backend and stays eager even under `accelerate launch --dynamo_backend inductor`."""
    from accelerate.state import AcceleratorState

    from iclevr.run_setup import start_generator_run

    args = gan.parse_args(["--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert not hasattr(args, "dynamo_backend")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    try:
        assert start_generator_run(args).state.dynamo_plugin.backend.value == "NO"
    finally:  # later in-process Accelerators start from a clean state
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_resume_is_exact_across_an_epoch_boundary(rendered_dir, tmp_path):
    """24 images in batches of 4 at two discriminator steps per generator step: 3 steps an epoch. A run stopped at step
    2 (mid-epoch) and one stopped at step 3 (an epoch's end), each resumed to step 5, equal the run never stopped."""
    flags = ["--max_train_steps", "5", "--checkpointing_steps", "1", "--use_ema", "--random_flip"]
    _launch(rendered_dir, tmp_path / "straight", *flags)
    reference = _generator_weights(tmp_path / "straight")
    for stop in (2, 3):
        out = tmp_path / f"stopped-{stop}"
        _launch(rendered_dir, out, *flags)
        for folder in out.glob("checkpoint-*"):
            if int(folder.name.split("-")[1]) > stop:
                subprocess.run(["rm", "-rf", str(folder)], check=True)
        result = _launch(rendered_dir, out, *flags, "--resume_from_checkpoint", "latest")
        assert f"checkpoint-{stop}" in result.stdout + result.stderr
        resumed = _generator_weights(out)
        assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_two_processes_over_gloo(rendered_dir, tmp_path):
    """DDP over both networks on CPU: each process trains on its share of every epoch, and one pipeline is saved."""
    _launch(rendered_dir, tmp_path / "out", "--max_train_steps", "3", "--checkpointing_steps", "2", "--use_ema",
            "--train_batch_size", "2", processes=2)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3 and summary["images_seen"] == 3 * 2 * 2 * 2
    assert ICLEVRGANPipeline.from_pretrained(tmp_path / "out")(["red sphere"], output_type="np").images.shape == (1, 16, 16, 3)


def test_evaluate_pipeline_scores_a_gan_like_a_diffusion_pipeline(trained, tmp_path):
    import evaluate_pipeline

    metrics = evaluate_pipeline.main(["--pipeline", str(trained), "--evaluator", str(trained.parent / "evaluator"),
                                      "--output_dir", str(tmp_path), "--num_seeds", "2", "--interpolation_study"])
    assert metrics["args"]["sampler"] == "one-step GAN generator"
    for name, result in metrics["sets"].items():
        assert len(result["accuracy"]["values"]) == 2 and (tmp_path / f"grid_{name}.png").is_file()
        assert len(list((tmp_path / "images" / name).glob("*.png"))) == result["conditions"]
    assert (tmp_path / "interpolation.png").is_file() and not (tmp_path / "denoising.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert "GAN generator" in report and "Denoising process" not in report
    with pytest.raises(ValueError, match="no sampler"):
        evaluate_pipeline.main(["--pipeline", str(trained), "--evaluator", str(trained.parent / "evaluator"),
                                "--output_dir", str(tmp_path / "sweep"), "--sweep"])
    with pytest.raises(ValueError, match="takes no sampler"):
        load_pipeline(str(trained), "ddim", "cpu")


def _tiny_pipeline(num_labels=24):
    torch.manual_seed(0)
    generator = ConditionalGenerator(num_labels=num_labels, sample_size=8, latent_dim=4, label_embedding_dim=4,
                                     block_out_channels=(8, 4))
    return ICLEVRGANPipeline(gan=generator.eval())


def test_pipeline_call_contract():
    pipe = _tiny_pipeline()
    seeded = lambda **kw: pipe([["red sphere"], ["cyan cube"]], generator=torch.Generator().manual_seed(1), output_type="pt", **kw).images  # noqa: E731
    torch.testing.assert_close(seeded(), seeded())  # reproducible
    assert pipe(["red sphere"], num_images_per_prompt=3, output_type="np").images.shape == (3, 8, 8, 3)
    assert len(pipe([["red sphere"]]).images) == 1  # PIL by default
    latents = initial_noise(pipe, 2, seed=0)
    assert latents.shape == (2, 4)
    first = pipe([["red sphere"], ["red sphere"]], latents=latents, output_type="pt").images
    torch.testing.assert_close(first, pipe([["red sphere"], ["red sphere"]], latents=latents, output_type="pt").images)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe([["red sphere"]], latents=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="output_type"):
        pipe([["red sphere"]], output_type="latent")
    with pytest.raises(ValueError, match="Did you mean 'red sphere'"):
        pipe([["red sphear"]])
    with pytest.raises(ValueError, match="list of generators of length 3, but requested an effective batch size of 2"):
        pipe([["red sphere"], ["cyan cube"]], generator=[torch.Generator()] * 3)
    per_image = [torch.Generator().manual_seed(i) for i in range(2)]  # one generator per image, as in diffusers
    assert pipe([["red sphere"], ["cyan cube"]], generator=per_image, output_type="pt").images.shape == (2, 3, 8, 8)
    assert not hasattr(pipe, "generator") and pipe.gan is pipe.components["gan"]  # the model is not the RNG's namesake


def test_labels_change_the_image():
    pipe = _tiny_pipeline()
    latents = torch.randn(1, 4, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
    images = pipe([["red sphere"], ["cyan cube"]], latents=latents, output_type="pt").images
    assert not torch.allclose(images[0], images[1])


def test_generator_and_vocabulary_must_agree():
    generator = ConditionalGenerator(num_labels=10, sample_size=8, latent_dim=4, label_embedding_dim=4, block_out_channels=(8, 4))
    with pytest.raises(ValueError, match="The GAN takes 10 labels, the vocabulary has 24"):
        ICLEVRGANPipeline(gan=generator)
    with pytest.raises(ValueError, match="power of two"):
        ConditionalGenerator(sample_size=24, block_out_channels=(8, 8, 8))


@pytest.mark.parametrize("head", gan.DISCRIMINATOR_HEADS)
def test_discriminator_heads(head):
    torch.manual_seed(0)
    discriminator = gan.Discriminator(24, [8, 16], head).eval()  # no power iteration between the two calls
    images = torch.randn(2, 3, 16, 16)
    vocab = LabelVocabulary()
    a = vocab.encode_batch([["red sphere"], ["red sphere"]])
    b = vocab.encode_batch([["red sphere"], ["cyan cube"]])
    logit_a, classes = discriminator(images, a)
    logit_b, _ = discriminator(images, b)
    assert logit_a.shape == (2,)
    assert (classes is None) == (head == "projection") and (classes is None or classes.shape == (2, 24))
    # the projection makes realness depend on the labels; the classifier alone leaves it label-blind
    assert torch.allclose(logit_a[0], logit_b[0]) and (head == "acgan") == bool(torch.allclose(logit_a[1], logit_b[1]))


def test_spectral_norm_bounds_every_layer():
    discriminator = gan.Discriminator(24, [8, 16], "both")
    for _ in range(30):  # power iterations run in training mode, one per forward
        discriminator(torch.randn(4, 3, 16, 16), torch.ones(4, 24))
    for module in discriminator.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            weight = module.weight.detach().flatten(1)
            assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.0, rel=0.05)


def test_losses():
    labels = torch.tensor([[1.0, 0.0]])
    confident = (torch.tensor([2.0]), None), (torch.tensor([-2.0]), None)
    assert gan.discriminator_loss(*confident, labels, 1.0) == 0  # beyond the hinge margins
    assert gan.discriminator_loss((torch.tensor([0.0]), None), (torch.tensor([0.0]), None), labels, 1.0) == 2
    assert gan.generator_loss((torch.tensor([3.0]), None), labels, 1.0) == -3
    with_classifier = gan.generator_loss((torch.tensor([0.0]), torch.tensor([[0.0, 0.0]])), labels, 0.5)
    assert with_classifier == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item())


def test_sampling_pipeline_restores_the_training_state():
    torch.manual_seed(0)
    generator = ConditionalGenerator(sample_size=8, latent_dim=4, label_embedding_dim=4, block_out_channels=(8, 4)).train()
    labels = LabelVocabulary().encode_batch([["red sphere"], ["cyan cube", "gray cylinder"]])
    for _ in range(3):  # live running statistics
        generator(torch.randn(8, 4), labels.repeat(4, 1))
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    rng = torch.get_rng_state()
    with gan.sampling_pipeline(generator, None, labels, seed=0, vocab=LabelVocabulary()) as pipe:
        assert not pipe.gan.training
        stats = {k: v.clone() for k, v in generator.state_dict().items() if "running" in k}
        assert any(not torch.equal(stats[k], before[k]) for k in stats)  # recomputed for sampling
    assert generator.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in generator.state_dict().items())


@pytest.mark.parametrize(("flags", "message"), [
    (["--resolution", "24"], "power of two"),
    (["--generator_channels", "8,8"], "--generator_channels needs 4 entries"),
    (["--discriminator_channels", "8"], "--discriminator_channels needs 3 entries"),
    (["--discriminator_steps", "0"], "argument --discriminator_steps: expected a positive integer"),
    (["--discriminator_head", "wgan"], "invalid choice"),
    (["--push_to_hub"], "--hub_model_id"),
])
def test_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        gan.parse_args(["--output_dir", "x", *flags])
    assert message in capsys.readouterr().err


def test_defaults_fit_the_resolution():
    args = gan.parse_args(["--output_dir", "x"])
    assert args.generator_channels == [256, 256, 128, 64] and args.discriminator_channels == [64, 128, 256]
    args = gan.parse_args(["--output_dir", "x", "--resolution", "64"])
    assert len(args.generator_channels) == 5 and len(args.discriminator_channels) == 4
