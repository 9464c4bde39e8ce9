import sys

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from PIL import Image

from pipeline_iclevr import ICLEVRPipeline


def tiny_unet(**overrides):
    torch.manual_seed(0)
    config = dict(sample_size=16, in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D", block_out_channels=(8, 16),
                  layers_per_block=1, norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=24)
    return UNet2DConditionModel(**(config | overrides)).eval()


@pytest.fixture
def pipe():
    pipe = ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, labels=(("red sphere",),), seed=0, **kwargs):
    kwargs = {"num_inference_steps": 2, "output_type": "pt", "generator": torch.Generator().manual_seed(seed)} | kwargs
    return pipe([list(c) for c in labels], **kwargs).images


def _final_latents(pipe, guidance_scale, labels=(("red sphere", "cyan cube"), ("gray cylinder",)), **kwargs):
    captured = {}

    def grab(_pipe, _step, _t, tensors):
        captured["latents"] = tensors["latents"].clone()
        return tensors

    _run(pipe, labels, num_inference_steps=1, guidance_scale=guidance_scale, callback_on_step_end=grab, **kwargs)
    return captured["latents"]


def _count_forwards(pipe, guidance_scale, **kwargs):
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, class_labels=None, **kwargs):
        calls.append(class_labels.clone())
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels, **kwargs)

    pipe.unet.forward = spy
    _run(pipe, [["red sphere"], ["gray cube", "blue cube"]], **({"num_inference_steps": 1} | kwargs), guidance_scale=guidance_scale)
    pipe.unet.forward = forward
    return calls


def test_guidance_formula(pipe):
    # One DDIM step is linear in the noise prediction, so guidance w gives null + w * (cond - null): w = 1 is the
    # conditional model, and w = 2 then fixes the null prediction.
    cond, two = _final_latents(pipe, 1.0), _final_latents(pipe, 2.0)
    null = 2 * cond - two
    torch.testing.assert_close(_final_latents(pipe, 3.0), null + 3.0 * (cond - null), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_final_latents(pipe, np.float32(4.5)), null + 4.5 * (cond - null), atol=1e-4, rtol=1e-4)


def test_guidance_at_most_one_samples_the_conditional_model_alone(pipe):
    """diffusers' convention: no guidance at w <= 1, so w = 0 still follows the labels ("red sphere" and "cyan cube"
    differ) and runs one conditional pass."""
    one, zero, half, three = (_count_forwards(pipe, g) for g in (1.0, 0.0, 0.5, 3.0))
    assert len(one) == len(zero) == len(half) == len(three) == 1
    for calls in (one, zero, half):
        assert calls[0].shape == (2, 24) and calls[0].sum() == 3
    assert three[0].shape == (4, 24) and three[0][:2].sum() == 0 and three[0][2:].sum() == 3  # one batched forward
    assert not torch.equal(_run(pipe, [["red sphere"]], guidance_scale=0), _run(pipe, [["cyan cube"]], guidance_scale=0))
    assert torch.equal(_run(pipe, guidance_scale=0), _run(pipe, guidance_scale=1))


def test_the_default_call_is_the_config_s(tmp_path):
    """Steps and guidance that a call does not name come from the pipeline's config, which the trainer fills with the
    values the model was validated with; they survive save and load."""
    pipe = ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100), default_num_inference_steps=3,
                          default_guidance_scale=1.0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    forwards = _count_forwards(reloaded, None, num_inference_steps=None)
    assert reloaded.num_timesteps == 3 and len(forwards) == 3 and forwards[0].shape == (2, 24)  # 3 steps, no guidance
    with pytest.raises(ValueError, match="default_num_inference_steps must be a positive integer"):
        ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(), default_num_inference_steps=0)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_scheduler_swaps(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    images = _run(pipe, num_inference_steps=3, guidance_scale=2.0)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert torch.equal(images, _run(pipe, num_inference_steps=3, guidance_scale=2.0))  # seeded → identical


def test_output_types_and_batching(pipe):
    labels = [["red sphere"], ["gray cube", "cyan cylinder"]]
    pil = _run(pipe, labels, output_type="pil", num_images_per_prompt=2)
    array = _run(pipe, labels, output_type="np", num_images_per_prompt=2)
    tensor = _run(pipe, labels, output_type="pt", num_images_per_prompt=2)
    assert len(pil) == 4 and all(isinstance(i, Image.Image) and i.size == (16, 16) for i in pil)
    assert isinstance(array, np.ndarray) and array.shape == (4, 16, 16, 3) and array.min() >= 0 and array.max() <= 1
    assert tensor.shape == (4, 3, 16, 16)
    np.testing.assert_allclose(array, tensor.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert isinstance(pipe(labels, num_inference_steps=1, return_dict=False)[0], list)


def test_label_forms_agree(pipe):
    names = _run(pipe, [["red sphere", "cyan cube"]])
    assert torch.equal(names, _run(pipe, [[9, 6]]))
    assert torch.equal(names, _run(pipe, [[np.int64(9), np.int64(6)]]))
    assert torch.equal(names, pipe(np.eye(24)[[6, 9]].sum(0), num_inference_steps=2, output_type="pt",
                                   generator=torch.Generator().manual_seed(0)).images)  # a numpy multi-hot row
    one = _run(pipe, [["red sphere"]])
    assert torch.equal(one, pipe("red sphere", num_inference_steps=2, output_type="pt",
                                 generator=torch.Generator().manual_seed(0)).images)  # a bare name: one condition
    assert torch.equal(names, pipe(["red sphere", "cyan cube"], num_inference_steps=2, output_type="pt",
                                   generator=torch.Generator().manual_seed(0)).images)  # one bare condition
    multi_hot = torch.zeros(24)
    multi_hot[[6, 9]] = 1
    assert torch.equal(names, pipe(multi_hot, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images)
    assert torch.equal(names, pipe(multi_hot[None], num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images)
    assert not torch.equal(names, _run(pipe, [["red sphere", "cyan cube"]], seed=1))


def test_given_latents_are_used(pipe):
    latents = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(_run(pipe, latents=latents, seed=0), _run(pipe, latents=latents, seed=1))


def test_half_precision_weights(pipe):
    pipe.unet.to(torch.bfloat16)
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, class_labels=None, **k: (seen.append(class_labels.dtype), forward(*a, class_labels=class_labels, **k))[1]
    images = _run(pipe, guidance_scale=2.0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and seen == [torch.bfloat16] * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": [["red spher"]]}, "Did you mean 'red sphere'"),
        ({"labels": []}, "The condition is empty"),
        ({"labels": [["red sphere", "red sphere"]]}, "twice"),
        ({"labels": torch.ones(2, 23)}, r"Condition 0 is a multi-hot row of shape \(23,\); it must have shape \(24,\)"),
        ({"labels": {"red sphere": 1}}, "labels must be a condition"),
        ({"labels": [1.0]}, r"holds the label 1.0 \(float\)"),
        ({"labels": torch.full((24,), float("nan"))}, r"may hold only 0 and 1, got \[nan\]"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be a positive integer"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
        ({"guidance_scale": "2"}, "guidance_scale must be a finite number"),
        ({"eta": float("nan")}, "eta must be a finite number in"),
        ({"eta": 1.5}, r"eta must be a finite number in \[0, 1\]"),
        ({"generator": [torch.Generator()] * 2}, "list of generators of length 2, but requested an effective batch size of 1"),
        ({"output_type": "jpg"}, "output_type"),
        ({"latents": torch.randn(2, 3, 16, 16)}, r"latents must have shape \(1, 3, 16, 16\)"),
        ({"callback_on_step_end_tensor_inputs": ["noise_pred"]}, "may only hold"),
    ],
)
def test_bad_inputs(pipe, kwargs, message):
    kwargs = {"labels": [["red sphere"]], "num_inference_steps": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_unet_must_embed_the_condition():
    with pytest.raises(ValueError, match="class_embed_type='projection'.*encoder_hid_dim=24"):
        ICLEVRPipeline(unet=tiny_unet(class_embed_type=None), scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim=2"):  # the UNet takes 24 labels
        ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(), label2id={"cat": 0, "dog": 1})


def test_a_pipeline_with_its_own_vocabulary_samples_by_its_names_and_keeps_them(tmp_path):
    label2id = {"dog": 1, "cat": 0, "red bird": 2}
    pipe = ICLEVRPipeline(unet=tiny_unet(projection_class_embeddings_input_dim=3), scheduler=DDIMScheduler(num_train_timesteps=100),
                          label2id=label2id)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.encode_labels([["dog"], ["cat", "Red_Bird"]]).tolist() == [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="Unknown label 'dgo'. Did you mean 'dog'"):
        pipe([["dgo"]], num_inference_steps=1)
    pipe.save_pretrained(tmp_path)
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    assert reloaded.vocab.labels == ("cat", "dog", "red bird")
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(_run(pipe, labels=[["dog"]]), _run(reloaded, labels=[["dog"]]))


def test_label_tokens_route():
    from pipeline_iclevr import condition_routes, label_tokens, unet_condition_kwargs

    conditions = torch.zeros(2, 24)
    conditions[0, [3, 9]] = 1
    tokens = label_tokens(conditions)
    assert tokens.shape == (2, 24, 24) and torch.equal(tokens[0].sum(0), conditions[0]) and not tokens[1].any()
    assert torch.equal(tokens[0, 9], torch.eye(24)[9])
    unet = tiny_unet(class_embed_type=None, encoder_hid_dim=24, encoder_hid_dim_type="text_proj", cross_attention_dim=8,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                     mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=2)
    assert condition_routes(unet.config) == ["cross_attention"]
    kwargs = unet_condition_kwargs(unet.config, conditions)
    assert kwargs["class_labels"] is None and torch.equal(kwargs["encoder_hidden_states"], tokens)
    pipe = ICLEVRPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    red, blue = _run(pipe, labels=[["red sphere"]]), _run(pipe, labels=[["blue sphere"]])
    assert red.shape == (1, 3, 16, 16) and not torch.equal(red, blue)


def test_save_load_and_remote_code(pipe, tmp_path):
    """A saved folder carries pipeline_iclevr.py and names it in model_index.json: it loads through this class with no
    extra arguments, and through DiffusionPipeline as remote code, with or without custom_pipeline."""
    import json
    from pathlib import Path

    pipe.save_pretrained(tmp_path)
    source = Path(__file__).resolve().parents[1] / "pipeline_iclevr.py"
    assert (tmp_path / "pipeline_iclevr.py").read_text() == source.read_text()
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == ["pipeline_iclevr", "ICLEVRPipeline"]
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    assert type(reloaded) is ICLEVRPipeline
    assert reloaded.config.label2id == pipe.config.label2id and reloaded.config.label2id["yellow cylinder"] == 23
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(_run(pipe, guidance_scale=2.0), _run(reloaded, guidance_scale=2.0))
    for kwargs in ({}, {"custom_pipeline": "pipeline_iclevr"}):
        remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True, **kwargs)
        assert type(remote).__name__ == "ICLEVRPipeline" and type(remote).__module__ != "pipeline_iclevr"
        remote.set_progress_bar_config(disable=True)
        assert torch.equal(_run(pipe, guidance_scale=2.0), _run(remote, guidance_scale=2.0))
        remote.save_pretrained(tmp_path / "again")  # a remote-code pipeline saves itself the same way
        assert (tmp_path / "again" / "pipeline_iclevr.py").read_text() == source.read_text()
    assert "pipeline_iclevr" in sys.modules


def test_a_step_end_callback_can_change_guidance_and_read_the_state(pipe):
    """As in every diffusers pipeline: the loop reads ``pipe._guidance_scale``, so a callback can switch guidance on
    or off mid-sampling, and ``num_timesteps`` / ``do_classifier_free_guidance`` report the state."""
    seen = []

    def raise_guidance(p, step, t, kwargs):
        seen.append((p.guidance_scale, p.do_classifier_free_guidance, p.num_timesteps))
        p._guidance_scale += 1.0
        return kwargs

    _run(pipe, num_inference_steps=3, guidance_scale=0.0, callback_on_step_end=raise_guidance)
    assert seen == [(0.0, False, 3), (1.0, False, 3), (2.0, True, 3)] and pipe.guidance_scale == 3.0
    # the guidance a callback sets is the guidance the next steps use: turning it off after step 0 equals w = 1 there
    forwards = []
    real = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: forwards.append(sample.shape[0]) or real(sample, *a, **k)
    _run(pipe, num_inference_steps=3, guidance_scale=2.0, callback_on_step_end=lambda p, i, t, kw: setattr(p, "_guidance_scale", 1.0) or kw)
    pipe.unet.forward = real
    assert forwards == [2, 1, 1]  # one image: a batched CFG pair, then the conditional pass alone


def test_a_step_end_callback_sees_and_replaces_the_latents(pipe):
    def zero_at_the_end(p, step, t, kwargs):
        assert set(kwargs) == {"latents"}
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == p.num_timesteps - 1 else kwargs

    images = _run(pipe, num_inference_steps=2, output_type="latent", callback_on_step_end=zero_at_the_end)
    assert not images.any()




def test_patch_size_draws_images_larger_than_the_unet(tmp_path):
    """Space-to-depth: a 12-channel 8x8 UNet with patch_size 2 draws 16x16 RGB images, keeps the layout through
    save/load, and each output pixel comes from its own channel of the UNet's output."""
    pipe = ICLEVRPipeline(unet=tiny_unet(sample_size=8, in_channels=12, out_channels=12),
                          scheduler=DDIMScheduler(num_train_timesteps=100), patch_size=2)
    pipe.set_progress_bar_config(disable=True)
    images = _run(pipe, [["red sphere"], ["cyan cube", "gray cylinder"]])
    assert images.shape == (2, 3, 16, 16)
    pipe.save_pretrained(tmp_path)
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.patch_size == 2
    torch.testing.assert_close(_run(reloaded, [["red sphere"], ["cyan cube", "gray cylinder"]]), images)
    with pytest.raises(ValueError, match="latents must have shape \\(1, 3, 16, 16\\)"):
        _run(pipe, latents=torch.randn(1, 12, 8, 8))


def test_patch_size_must_match_the_unet_channels():
    with pytest.raises(ValueError, match="patch_size 2 needs a UNet with 12 output channels"):
        ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(), patch_size=2)
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(), patch_size=0)


def test_predict_maps_each_patch_pixel_to_its_own_channel():
    """An identity 'UNet' through `predict` returns the sample unchanged: unshuffle and shuffle are inverses, and
    channel 4 c + k of the UNet's input is colour c of pixel k of each 2x2 patch (`pixel_unshuffle`'s order)."""
    from pipeline_iclevr import predict

    class Identity(torch.nn.Module):
        config = tiny_unet(sample_size=4, in_channels=12, out_channels=12).config

        def forward(self, sample, timestep, **kwargs):
            self.seen = sample
            return type("Out", (), {"sample": sample})()

    identity, sample = Identity(), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(predict(identity, sample, 5, torch.eye(24)[:2], patch_size=2), sample)
    assert identity.seen.shape == (2, 12, 4, 4)
    torch.testing.assert_close(identity.seen[:, 0::4], sample[:, :, 0::2, 0::2])  # top-left pixel of every patch
    torch.testing.assert_close(identity.seen[:, 3::4], sample[:, :, 1::2, 1::2])  # bottom-right


def test_interrupt_skips_the_remaining_steps(pipe):
    forwards = []
    real = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: forwards.append(sample.shape[0]) or real(sample, *a, **k)

    def stop_after_the_first(p, step, t, kwargs):
        p._interrupt = True
        return kwargs

    _run(pipe, num_inference_steps=4, guidance_scale=2.0, callback_on_step_end=stop_after_the_first)
    pipe.unet.forward = real
    assert forwards == [2] and pipe.interrupt


def test_diffusers_cfg_cutoff_callback_and_prompt_embeds(pipe):
    """diffusers' own SDCFGCutoffCallback turns guidance off from its step on; a callback can read and replace the
    condition rows (``prompt_embeds``), which then steer the remaining steps."""
    from diffusers.callbacks import SDCFGCutoffCallback

    forwards = []
    real = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, class_labels=None, **k: forwards.append(class_labels.clone()) or real(sample, *a, class_labels=class_labels, **k)
    _run(pipe, num_inference_steps=3, guidance_scale=2.0, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0))
    assert [f.shape[0] for f in forwards] == [2, 1, 1] and forwards[1].sum() == 1 and pipe.guidance_scale == 0.0
    with pytest.raises(ValueError, match="SDCFGCutoffCallback keeps one row, so it works with one image per call"):
        _run(pipe, [["red sphere"], ["cyan cube"]], num_inference_steps=3, guidance_scale=2.0,
             callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0))

    forwards.clear()

    def swap_labels(p, step, t, kwargs):
        assert set(kwargs) == {"latents", "prompt_embeds"} and kwargs["prompt_embeds"].shape == (2, 24)
        return {"prompt_embeds": torch.eye(24)[None, 0].repeat(2, 1) * torch.tensor([[0.0], [1.0]])}

    swapped = _run(pipe, num_inference_steps=2, guidance_scale=2.0, callback_on_step_end=swap_labels,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    pipe.unet.forward = real
    assert forwards[1][1].nonzero().flatten().tolist() == [0]  # the second step drew "gray cube"
    assert not torch.equal(swapped, _run(pipe, num_inference_steps=2, guidance_scale=2.0))


def test_more_labels_than_the_training_images_held_are_sampled_with_a_warning(caplog):
    pipe = ICLEVRPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100), max_labels_per_image=3)
    pipe.set_progress_bar_config(disable=True)
    _run(pipe, [["red sphere", "cyan cube", "gray cube"]])
    assert "more than 3 labels" not in caplog.text
    images = _run(pipe, [["red sphere"], list(range(24))])
    assert images.shape[0] == 2 and "1 condition(s) ask for more than 3 labels (up to 24)" in caplog.text
