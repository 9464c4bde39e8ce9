# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""`ICLEVRGANPipeline`: the conditional GAN baseline's generator (`ConditionalGenerator`) and its one-step pipeline.

Like ``pipeline_iclevr.py``, which it imports the label vocabulary from, this file is copied into every saved GAN so
the folder loads as remote code; it may import only the standard library, torch, diffusers and that file. It holds the
one pipeline class of its module, as diffusers' ``custom_pipeline`` loading needs.

    >>> pipe = ICLEVRGANPipeline.from_pretrained("outputs/iclevr-gan")
    >>> images = pipe([["red sphere", "cyan cube"], ["gray cylinder"]]).images
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor

try:  # as remote code: a module of diffusers' package of dynamic modules, beside its copy of pipeline_iclevr.py
    from .pipeline_iclevr import (
        DEFAULT_LABEL2ID,
        LabelVocabulary,
        check_sampling_inputs,
        encode_conditions,
        postprocess_images,
        read_class_name_as_own,
        ship_source,
    )
except ImportError:  # in the repository or an installed package, where pipeline_iclevr is a top-level module
    from pipeline_iclevr import (
        DEFAULT_LABEL2ID,
        LabelVocabulary,
        check_sampling_inputs,
        encode_conditions,
        postprocess_images,
        read_class_name_as_own,
        ship_source,
    )


class ConditionalBatchNorm2d(torch.nn.Module):
    """BatchNorm without its own affine parameters, scaled and shifted per sample from the conditioning vector
    (BigGAN): every generator block sees the labels, not just the first layer."""

    def __init__(self, channels: int, condition_dim: int):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(channels, affine=False)
        self.gain = torch.nn.Linear(condition_dim, channels)
        self.bias = torch.nn.Linear(condition_dim, channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gain(condition)[:, :, None, None]) + self.bias(condition)[:, :, None, None]


class GeneratorBlock(torch.nn.Module):
    """BigGAN's up-block: conditional BN → ReLU → 2x nearest upsampling → conv → conditional BN → ReLU → conv, plus an
    upsampled 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(in_channels, condition_dim)
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ConditionalBatchNorm2d(out_channels, condition_dim)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, condition)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), condition)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ConditionalGenerator(ModelMixin, ConfigMixin):
    r"""A BigGAN-style conditional generator: noise ``z`` and a multi-hot label vector → an image in [-1, 1].

    The labels are embedded as the sum of one learned vector per present label and joined with ``z``; the result
    drives the conditional BatchNorm of every block.

    Args:
        num_labels (`int`, defaults to 24): length of the multi-hot condition.
        sample_size (`int`, defaults to 32): output height and width (a power of two, at least 8).
        latent_dim (`int`, defaults to 128): length of the noise vector ``z``.
        label_embedding_dim (`int`, defaults to 128): width of the label embedding.
        block_out_channels (`tuple[int]`): channels from the 4x4 base up to the output resolution, one entry per
            level (``log2(sample_size / 4) + 1`` entries).
    """

    @register_to_config
    def __init__(self, num_labels: int = 24, sample_size: int = 32, latent_dim: int = 128, label_embedding_dim: int = 128,
                 block_out_channels: tuple[int, ...] = (256, 256, 128, 64)):
        super().__init__()
        levels = sample_size.bit_length() - 3  # upsamplings from 4x4
        if sample_size < 8 or sample_size & (sample_size - 1) or len(block_out_channels) != levels + 1:
            raise ValueError(f"sample_size must be a power of two >= 8 with one channel count per level from 4x4 up "
                             f"({levels + 1} for {sample_size}), got {sample_size} and {tuple(block_out_channels)}.")
        condition_dim = latent_dim + label_embedding_dim
        self.label_embedding = torch.nn.Linear(num_labels, label_embedding_dim, bias=False)
        self.base = torch.nn.Linear(condition_dim, 16 * block_out_channels[0])
        self.blocks = torch.nn.ModuleList(GeneratorBlock(a, b, condition_dim)
                                          for a, b in zip(block_out_channels[:-1], block_out_channels[1:]))
        self.norm_out = torch.nn.BatchNorm2d(block_out_channels[-1])
        self.conv_out = torch.nn.Conv2d(block_out_channels[-1], 3, 3, padding=1)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, sample_size, sample_size)`` in [-1, 1] from ``latents`` ``(B, latent_dim)`` and multi-hot
        ``labels`` ``(B, num_labels)``."""
        condition = torch.cat([latents, self.label_embedding(labels.to(latents.dtype))], 1)
        h = self.base(condition).view(latents.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, condition)
        return torch.tanh(self.conv_out(F.relu(self.norm_out(h))))


class ICLEVRGANPipeline(DiffusionPipeline):
    r"""One-step sampling from a [`ConditionalGenerator`], with the same label conditions and outputs as
    `ICLEVRPipeline`, so that every tool that scores a diffusion pipeline scores a GAN the same way.

    Args:
        gan ([`ConditionalGenerator`]): the GAN's trained generator network (its EMA weights, when trained with them).
            Named ``gan``, not ``generator``, because ``generator`` is the random-number generator of every diffusers
            ``__call__``.
        label2id (`dict`, *optional*): the label vocabulary; defaults to i-CLEVR's 24 labels.
    """

    model_cpu_offload_seq = "gan"

    def __init__(self, gan: ConditionalGenerator, label2id: dict[str, int] | None = None):
        super().__init__()
        label2id = dict(label2id) if label2id else dict(DEFAULT_LABEL2ID)
        self.vocab = LabelVocabulary(label2id)
        if gan.config.num_labels != len(self.vocab):
            raise ValueError(f"The GAN takes {gan.config.num_labels} labels, the vocabulary has {len(self.vocab)}.")
        self.register_modules(gan=gan)
        self.register_to_config(label2id=label2id)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.gan.config.sample_size, self.gan.config.sample_size

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """diffusers' ``save_pretrained`` plus this file and `pipeline_iclevr` (which it imports), at the top (the
        pipeline class) and in ``gan/`` (its model class), so ``DiffusionPipeline.from_pretrained(path,
        trust_remote_code=True)`` loads the folder."""
        super().save_pretrained(save_directory, **kwargs)
        ship_source(self, save_directory, component_folders=["gan"])

    @classmethod
    def load_config(cls, *args, **kwargs):
        return read_class_name_as_own(super().load_config(*args, **kwargs))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, with the GAN loaded by this file's class (so loading through this class
        needs no ``trust_remote_code``)."""
        if "gan" not in kwargs:
            folder = Path(pretrained_model_name_or_path)
            if not folder.is_dir():
                folder = Path(cls.download(pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir")}))
            kwargs["gan"] = ConditionalGenerator.from_pretrained(folder / "gan", torch_dtype=kwargs.get("torch_dtype"))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def encode_labels(self, labels, num_images_per_prompt: int = 1) -> torch.Tensor:
        """Multi-hot conditions ``(batch * num_images_per_prompt, N)``, as `ICLEVRPipeline` reads them."""
        return encode_conditions(self.vocab, labels, num_images_per_prompt)

    def check_inputs(self, num_images_per_prompt, output_type, generator, latents, shape):
        check_sampling_inputs(num_images_per_prompt, output_type, latents, shape, ("pil", "np", "pt"), "batch, latent_dim",
                              generator)

    @torch.no_grad()
    def __call__(self, labels, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, num_images_per_prompt: int = 1, output_type: str = "pil",
                 return_dict: bool = True):
        r"""Generate images for label conditions in one forward pass.

        Args:
            labels: one condition or a batch, as for [`ICLEVRPipeline`].
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): for reproducible sampling; a list
                holds one generator per image.
            latents (`torch.Tensor`, *optional*): the noise vectors ``(batch * num_images_per_prompt, latent_dim)``.
            num_images_per_prompt (`int`, defaults to 1): images per condition.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` (``(B, H, W, 3)`` in [0, 1]) or ``"pt"``.
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
        """
        conditions = self.encode_labels(labels)
        images_per_condition = num_images_per_prompt if isinstance(num_images_per_prompt, int) else 1
        shape = (conditions.shape[0] * images_per_condition, self.gan.config.latent_dim)
        self.check_inputs(num_images_per_prompt, output_type, generator, latents, shape)
        conditions = conditions.repeat_interleave(num_images_per_prompt, dim=0)
        device, dtype = self._execution_device, self.gan.dtype
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        images = self.gan(latents.to(device=device, dtype=dtype), conditions.to(device=device, dtype=dtype))
        result = postprocess_images(images, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=result) if return_dict else (result,)
