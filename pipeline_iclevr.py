# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""`ICLEVRPipeline`: class-conditional image generation for i-CLEVR, and the i-CLEVR label vocabulary.

This file is copied into every saved model so the Hub can load it as remote code, so it may import only
the standard library, torch and diffusers. It owns label encoding; every other module imports it from here.

    >>> pipe = ICLEVRPipeline.from_pretrained("outputs/iclevr-ddpm")
    >>> images = pipe([["red sphere", "cyan cube"], ["gray cylinder"]], num_inference_steps=25, guidance_scale=2.0).images

The default vocabulary is the course's `objects.json`: 24 labels, 8 colours x 3 shapes, with
``index = shape_index * 8 + colour_index``::

    >>> from pipeline_iclevr import LabelVocabulary
    >>> vocab = LabelVocabulary()
    >>> vocab.encode(["Red sphere", "cyan  CUBE"]).nonzero().flatten().tolist()
    [6, 9]
    >>> vocab.decode(vocab.encode([9, 6]))
    ['cyan cube', 'red sphere']
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
LABELS = tuple(f"{color} {shape}" for shape in SHAPES for color in COLORS)
DEFAULT_LABEL2ID = {name: i for i, name in enumerate(LABELS)}  # the course's objects.json
# The guidance every entry point samples with unless told otherwise (chosen on a validation set, not on test.json).
DEFAULT_GUIDANCE_SCALE = 2.0

# One condition: label names, label indices, or a multi-hot tensor of length 24.
Condition = Sequence[str] | Sequence[int] | torch.Tensor


def normalize_label_name(name: str) -> str:
    """Canonical spelling of a label name: lower case, words separated by one space (``"Red_Sphere "`` → ``"red sphere"``)."""
    if not isinstance(name, str):
        raise ValueError(f"A label name must be a string, got {type(name).__name__} {name!r}.")
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


class LabelVocabulary:
    r"""Maps i-CLEVR label names ↔ indices ↔ multi-hot vectors, validating every input.

    Args:
        label2id (`Mapping[str, int]`, *optional*):
            The label → index map: canonical names (see `normalize_label_name`) and indices ``0..N-1``, each once.
            Defaults to i-CLEVR's 24 labels in the course's `objects.json` order.

    Accepted forms of one *condition*:
        - a list of label names (case-, space- and underscore-insensitive), e.g. ``["red sphere", "cyan cube"]``;
        - a list of label indices, e.g. ``[9, 6]``;
        - a multi-hot `torch.Tensor` of shape ``(N,)`` holding only 0 and 1.

    A condition must hold at least one label and no label twice. The all-zero vector (the classifier-free
    guidance null condition) is built with [`~LabelVocabulary.null_condition`], never by `encode`.
    """

    def __init__(self, label2id: Mapping[str, int] | None = None):
        label2id = dict(DEFAULT_LABEL2ID if label2id is None else label2id)
        check_label_map(label2id)
        self.labels: tuple[str, ...] = tuple(sorted(label2id, key=label2id.__getitem__))
        self.label2id: dict[str, int] = {name: i for i, name in enumerate(self.labels)}
        self.id2label: dict[int, str] = dict(enumerate(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelVocabulary({len(self)} labels: {', '.join(self.labels)})"

    # --- single conditions -------------------------------------------------------------------------------
    def index(self, name: str) -> int:
        """Index of one label name; an unknown name raises `ValueError` listing the closest valid names."""
        key = normalize_label_name(name)
        if key in self.label2id:
            return self.label2id[key]
        close = difflib.get_close_matches(key, self.labels, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if self.labels == LABELS:
            raise ValueError(
                f"Unknown i-CLEVR label {name!r}.{hint} Valid labels are '<colour> <shape>' with colour in "
                f"{', '.join(COLORS)} and shape in {', '.join(SHAPES)}: {', '.join(self.labels)}."
            )
        raise ValueError(f"Unknown label {name!r}.{hint} Valid labels are: {', '.join(self.labels)}.")

    def indices(self, condition: Condition) -> list[int]:
        """Sorted label indices of one condition (names, indices or a multi-hot tensor)."""
        if isinstance(condition, torch.Tensor):
            return self._indices_from_multi_hot(condition)
        if isinstance(condition, str):
            raise ValueError(
                f"A condition is a list of labels, got the bare string {condition!r}; write [{condition!r}]."
            )
        if not isinstance(condition, Iterable):
            raise ValueError(f"A condition must be a list of label names or indices, got {type(condition).__name__}.")
        items = list(condition)
        if not items:
            raise ValueError(
                "Empty condition: every image needs at least one label. (The classifier-free guidance null "
                "condition is LabelVocabulary.null_condition(), not an empty list.)"
            )
        ids = [self._item_index(item) for item in items]
        duplicates = sorted({self.labels[i] for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"Duplicate label(s) {duplicates} in condition {items!r}: each label may appear once.")
        return sorted(ids)

    def encode(self, condition: Condition) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(N,)`` for one condition."""
        vector = torch.zeros(len(self), dtype=torch.float32)
        vector[self.indices(condition)] = 1.0
        return vector

    def decode(self, multi_hot: torch.Tensor) -> list[str]:
        """Label names (in vocabulary order) of one multi-hot vector."""
        return [self.labels[i] for i in self._indices_from_multi_hot(multi_hot)]

    def names(self, condition: Condition) -> list[str]:
        """Canonical label names of one condition, in the order given (indices and tensors in vocabulary order)."""
        if isinstance(condition, torch.Tensor):
            return self.decode(condition)
        self.indices(condition)  # validates: empty, duplicates, unknown names
        return [self.labels[self._item_index(item)] for item in condition]

    def null_condition(self, batch_size: int | None = None) -> torch.Tensor:
        """The all-zero condition used for classifier-free guidance (shape ``(N,)`` or ``(batch_size, N)``)."""
        shape = (len(self),) if batch_size is None else (batch_size, len(self))
        return torch.zeros(shape, dtype=torch.float32)

    # --- batches -------------------------------------------------------------------------------------------
    def encode_batch(self, conditions: Sequence[Condition] | torch.Tensor) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(batch, N)`` from a list of conditions or a ``(batch, N)`` tensor."""
        if isinstance(conditions, torch.Tensor):
            if conditions.ndim != 2:
                raise ValueError(
                    f"A batch of multi-hot conditions must have shape (batch, {len(self)}), got {tuple(conditions.shape)}."
                )
            for row in range(conditions.shape[0]):
                self._indices_from_multi_hot(conditions[row], where=f" (row {row})")
            return conditions.to(torch.float32).clone()
        if isinstance(conditions, str) or not isinstance(conditions, Iterable):
            raise ValueError(
                f"A batch of conditions must be a list of conditions (e.g. [['red sphere'], ['cyan cube']]), "
                f"got {conditions!r}."
            )
        conditions = list(conditions)
        if not conditions:
            raise ValueError("Empty batch: give at least one condition.")
        rows = []
        for row, condition in enumerate(conditions):
            if isinstance(condition, (str, int)):
                raise ValueError(
                    f"Batch item {row} is the single label {condition!r}, not a condition; a batch is a list of "
                    f"label lists, e.g. [[{condition!r}]]. For one condition use encode()."
                )
            try:
                rows.append(self.encode(condition))
            except ValueError as error:
                raise ValueError(f"Condition {row}: {error}") from None
        return torch.stack(rows)

    def decode_batch(self, multi_hot: torch.Tensor) -> list[list[str]]:
        """Label names of each row of a ``(batch, N)`` multi-hot tensor."""
        if not isinstance(multi_hot, torch.Tensor) or multi_hot.ndim != 2:
            raise ValueError(f"decode_batch expects a (batch, {len(self)}) tensor, got {describe_input(multi_hot)}.")
        return [self.decode(row) for row in multi_hot]

    # --- helpers -------------------------------------------------------------------------------------------
    def _item_index(self, item) -> int:
        if isinstance(item, str):
            return self.index(item)
        if isinstance(item, bool) or not isinstance(item, (int, torch.Tensor)) and not hasattr(item, "__index__"):
            raise ValueError(f"A label must be a name or an integer index, got {type(item).__name__} {item!r}.")
        index = int(item)
        if not 0 <= index < len(self):
            raise ValueError(f"Label index {index} is out of range: valid indices are 0..{len(self) - 1}.")
        return index

    def _indices_from_multi_hot(self, vector: torch.Tensor, where: str = "") -> list[int]:
        if not isinstance(vector, torch.Tensor):
            raise ValueError(f"Expected a multi-hot tensor{where}, got {describe_input(vector)}.")
        if vector.ndim != 1 or vector.shape[0] != len(self):
            raise ValueError(
                f"A multi-hot condition{where} must have shape ({len(self)},), got {tuple(vector.shape)}; "
                "batches go through encode_batch/decode_batch."
            )
        values = vector.detach().to(torch.float32)
        bad = ~((values == 0) | (values == 1))
        if bad.any():
            raise ValueError(
                f"A multi-hot condition{where} may hold only 0 and 1, got {values[bad].unique().tolist()} at "
                f"position(s) {bad.nonzero().flatten().tolist()}."
            )
        ids = values.nonzero().flatten().tolist()
        if not ids:
            raise ValueError(f"Empty condition{where}: the multi-hot vector is all zeros.")
        return ids


def check_label_map(label2id: Mapping[str, int]) -> None:
    """Check a label → index map: canonical, distinct names and the indices ``0..N-1``, each once."""
    if not isinstance(label2id, Mapping) or not label2id:
        raise ValueError(f"A label vocabulary must be a non-empty map of label names to indices, got {describe_input(label2id)}.")
    names = [name for name in label2id if not isinstance(name, str) or not name or normalize_label_name(name) != name]
    if names:
        raise ValueError(f"Label names must be lower case words separated by single spaces, got {names[:5]}; write them "
                         "as normalize_label_name does.")
    indices = list(label2id.values())
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices) or sorted(indices) != list(range(len(indices))):
        raise ValueError(f"Label indices must be the integers 0..{len(label2id) - 1}, each used once; got {indices}.")


def validate_objects_json(label2id: Mapping[str, int]) -> None:
    """Check a user's `objects.json` mapping against the course vocabulary; raise `ValueError` naming every mismatch."""
    if not isinstance(label2id, Mapping):
        raise ValueError(f"objects.json must map label names to indices, got {type(label2id).__name__}.")
    problems = []
    for name, index in label2id.items():
        expected = LABELS.index(name) if name in LABELS else None
        if expected is None:
            problems.append(f"unknown label {name!r}")
        elif index != expected:
            problems.append(f"{name!r} has index {index!r}, the course order gives {expected}")
    missing = [name for name in LABELS if name not in label2id]
    if missing:
        problems.append(f"missing label(s) {missing}")
    if problems:
        raise ValueError(
            "objects.json does not match the i-CLEVR vocabulary (the course's objects.json order): "
            + "; ".join(problems)
            + ". Use the course's objects.json, or omit it to use the built-in vocabulary."
        )


class ICLEVRPipeline(DiffusionPipeline):
    r"""Generate i-CLEVR scenes from multi-hot label conditions with classifier-free guidance.

    Args:
        unet ([`UNet2DConditionModel`]):
            Denoiser that embeds the multi-hot condition itself, so the embedding is saved and reloaded with it:
            globally (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=N``) and/or as one
            cross-attention token per label (``encoder_hid_dim=N``, ``encoder_hid_dim_type="text_proj"``; see
            [`label_tokens`]).
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...); swap with ``Scheduler.from_config``.
        label2id (`dict`, *optional*):
            The label vocabulary (see [`LabelVocabulary`]), stored in the pipeline config so it survives save/load.
            Defaults to i-CLEVR's 24 labels.
        patch_size (`int`, *optional*, defaults to 1):
            Space-to-depth factor ``p``: the UNet denoises ``(3 p², H / p, W / p)`` tensors, each channel group one
            pixel of a ``p x p`` patch, and the pipeline returns ``H x W`` images (see [`predict`]). With ``p = 2`` a
            32x32 UNet draws 64x64 images at nearly the cost of 32x32 ones.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    # --- saving and loading: a saved folder carries this file and names it in model_index.json -------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """diffusers' ``save_pretrained``, plus a copy of this file and ``"_class_name": ["pipeline_iclevr",
        "ICLEVRPipeline"]`` in ``model_index.json``, so the folder (or its Hub repository) loads with
        ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` as well as with this class."""
        super().save_pretrained(save_directory, **kwargs)
        ship_source(self, save_directory)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """The folder's config, its ``[module, class]`` name read as this class: loading through ``ICLEVRPipeline``
        itself uses this class and needs no ``trust_remote_code``."""
        return read_class_name_as_own(super().load_config(*args, **kwargs))

    # --- the sampling state diffusers' step-end callbacks read and change ------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a step runs the null and the conditional prediction (every ``w`` but 0 and 1, which need one)."""
        return self._guidance_scale not in (0.0, 1.0)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images (and of ``latents``): the UNet's sample size times ``patch_size``."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return size[0] * self.config.patch_size, size[1] * self.config.patch_size

    def __init__(self, unet, scheduler, label2id: dict[str, int] | None = None, patch_size: int = 1):
        super().__init__()
        label2id = dict(label2id) if label2id else dict(DEFAULT_LABEL2ID)
        self.vocab = LabelVocabulary(label2id)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
        if unet.config.in_channels != 3 * patch_size**2 or unet.config.out_channels != 3 * patch_size**2:
            raise ValueError(
                f"patch_size {patch_size} needs a UNet with {3 * patch_size**2} input and output channels (3 per pixel of a "
                f"{patch_size}x{patch_size} patch), got {unet.config.in_channels} in and {unet.config.out_channels} out."
            )
        if not condition_routes(unet.config, len(self.vocab)):
            raise ValueError(
                "The UNet must embed the multi-hot condition itself: build it with class_embed_type='projection' and "
                f"projection_class_embeddings_input_dim={len(self.vocab)} (a global embedding), and/or with "
                f"encoder_hid_dim={len(self.vocab)} and encoder_hid_dim_type='text_proj' (one cross-attention token per label)."
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(label2id=label2id, patch_size=patch_size)

    def encode_labels(self, labels, num_images_per_prompt: int = 1) -> torch.Tensor:
        """Multi-hot conditions ``(batch * num_images_per_prompt, N)`` from one condition or a list of them
        (`encode_conditions`)."""
        return encode_conditions(self.vocab, labels, num_images_per_prompt)

    def check_inputs(self, num_inference_steps, guidance_scale, num_images_per_prompt, output_type, latents, shape):
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}.")
        check_sampling_inputs(num_images_per_prompt, output_type, latents, shape, ("pil", "np", "pt", "latent"),
                              "batch, channels, height, width")

    def prepare_extra_step_kwargs(self, generator, eta):
        """``eta`` and ``generator`` for schedulers whose ``step`` takes them (DDIM takes eta; DDPM a generator)."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        labels,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate images for label conditions.

        Args:
            labels: one condition (``["red sphere", "cyan cube"]``, ``[9, 6]`` or a multi-hot tensor) or a batch
                (a list of conditions or a ``(batch, N)`` tensor).
            num_inference_steps (`int`, defaults to 25): denoising steps (the project saves its pipelines with
                DPM-Solver++, validated at 25).
            guidance_scale (`float`, defaults to 2.0): classifier-free guidance weight ``w`` in
                ``eps = eps_null + w * (eps_cond - eps_null)``. ``w = 1`` runs the conditional model alone and
                ``w = 0`` the null (all-zero) condition alone, in a single pass; any other value runs both in one
                batched forward.
            generator (`torch.Generator`, *optional*): for reproducible sampling.
            latents (`torch.Tensor`, *optional*): initial noise ``(batch * num_images_per_prompt, 3, H, W)`` in pixel
                space (``H`` = the UNet's sample size x ``patch_size``).
            num_images_per_prompt (`int`, defaults to 1): images per condition.
            eta (`float`, defaults to 0.0): DDIM's eta; ignored by schedulers without it.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` (``(B, H, W, 3)`` floats in [0, 1]),
                ``"pt"`` (``(B, 3, H, W)`` in [0, 1]) or ``"latent"`` (the denoised sample as is, in [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called as
                ``fn(pipe, step, timestep, callback_kwargs)`` after every step; may return a dict replacing
                ``latents``, and may change ``pipe._guidance_scale`` for the steps that follow.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors passed in ``callback_kwargs``.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the generated images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if not set(tensor_inputs) <= set(self._callback_tensor_inputs):  # latents are all this loop has to share
            raise ValueError(f"callback_on_step_end_tensor_inputs may only hold {self._callback_tensor_inputs}, got {tensor_inputs}.")
        device, dtype = self._execution_device, self.unet.dtype
        conditions = self.encode_labels(labels, num_images_per_prompt if isinstance(num_images_per_prompt, int) and num_images_per_prompt > 0 else 1)
        patch = self.config.patch_size
        shape = (conditions.shape[0], self.unet.config.in_channels // patch**2, *self.image_size)
        self.check_inputs(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, latents, shape)

        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        conditions = conditions.to(device=device, dtype=dtype)
        null_conditions = torch.zeros_like(conditions)
        self._guidance_scale = guidance_scale

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.do_classifier_free_guidance:  # null and conditional in one batched forward
                model_input, class_labels = torch.cat([latents, latents]), torch.cat([null_conditions, conditions])
            else:
                model_input, class_labels = latents, (conditions if self._guidance_scale == 1.0 else null_conditions)
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred = predict(self.unet, model_input, t, class_labels, patch)
            if self.do_classifier_free_guidance:
                null, cond = noise_pred.chunk(2)
                noise_pred = null + self._guidance_scale * (cond - null)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})  # the only tensor input
                latents = (outputs or {}).get("latents", latents)

        result = latents if output_type == "latent" else postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def condition_routes(unet_config, num_labels: int = len(LABELS)) -> list[str]:
    """How a UNet config takes the multi-hot condition: ``"class_embedding"`` and/or ``"cross_attention"``."""
    routes = []
    if getattr(unet_config, "class_embed_type", None) == "projection" and getattr(
        unet_config, "projection_class_embeddings_input_dim", None
    ) == num_labels:
        routes.append("class_embedding")
    if getattr(unet_config, "encoder_hid_dim_type", None) == "text_proj" and getattr(unet_config, "encoder_hid_dim", None) == num_labels:
        routes.append("cross_attention")
    return routes


def label_tokens(multi_hot: torch.Tensor) -> torch.Tensor:
    """One cross-attention token per label, ``(B, L, L)``: token ``i`` is one-hot ``i`` if label ``i`` is present, else zero.

    The UNet's ``encoder_hid_proj`` (a Linear from L) turns a present label into its own learned embedding and every
    absent one (and all of the null condition's) into the same bias vector, a "nothing here" token. Spatial
    positions can then attend to the object they are drawing, which binds colour and shape per object far better
    than one global vector. The set has no order, so no positional encoding is needed.
    """
    return torch.diag_embed(multi_hot)


def unet_condition_kwargs(unet_config, conditions: torch.Tensor) -> dict:
    """The UNet keyword arguments that carry multi-hot ``conditions`` ``(B, L)`` (zero rows are the null condition)."""
    routes = condition_routes(unet_config, conditions.shape[-1])
    return {
        "class_labels": conditions if "class_embedding" in routes else None,
        "encoder_hidden_states": label_tokens(conditions) if "cross_attention" in routes else None,
    }


def predict(unet, sample: torch.Tensor, timestep, conditions: torch.Tensor, patch_size: int = 1) -> torch.Tensor:
    """The UNet's prediction for a pixel-space ``sample`` ``(B, 3, H, W)``, shaped like it.

    With ``patch_size`` ``p > 1`` the sample enters space-to-depth (`pixel_unshuffle`: ``(B, 3 p², H / p, W / p)``) and
    the prediction leaves through `pixel_shuffle`, so the noise, the loss and the sampler all stay in pixel space and
    only the UNet works at the lower resolution. Training calls this too, so both see the same layout.
    """
    config = getattr(unet, "module", unet).config  # DDP wraps the model in multi-process runs
    if patch_size > 1:
        sample = F.pixel_unshuffle(sample, patch_size)
    prediction = unet(sample, timestep, **unet_condition_kwargs(config, conditions)).sample
    return F.pixel_shuffle(prediction, patch_size) if patch_size > 1 else prediction


def ship_source(pipeline: DiffusionPipeline, save_directory: str | os.PathLike, component_folders: Sequence[str] = ()) -> None:
    """Copy the pipeline's module file and this one (which it may import) into a saved pipeline folder, and into
    ``component_folders``, where diffusers looks for the code of custom components; and name the module in
    ``model_index.json``: ``"_class_name": [<module>, <class>]``."""
    module = Path(inspect.getsourcefile(type(pipeline)))
    for folder in (Path(save_directory), *(Path(save_directory) / name for name in component_folders)):
        for source in {module, Path(__file__)}:
            target = folder / source.name
            if source.resolve() != target.resolve():
                shutil.copy(source, target)
    index = Path(save_directory) / "model_index.json"
    config = json.loads(index.read_text())
    config["_class_name"] = [module.stem, type(pipeline).__name__]
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_sampling_inputs(num_images_per_prompt, output_type, latents, shape, output_types: Sequence[str], layout: str) -> None:
    """The checks every pipeline's ``check_inputs`` shares: images per condition, the output type, the latents' shape."""
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
    if output_type not in output_types:
        names = ", ".join(repr(name) for name in output_types[:-1])
        raise ValueError(f"output_type must be {names} or {output_types[-1]!r}, got {output_type!r}.")
    if latents is not None and tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)} ({layout}), got {tuple(latents.shape)}.")


def postprocess_images(samples: torch.Tensor, output_type: str):
    """Samples ``(B, 3, H, W)`` in [-1, 1] as a pipeline returns them: ``"pt"`` ``(B, 3, H, W)`` in [0, 1] on the CPU,
    ``"np"`` ``(B, H, W, 3)``, or ``"pil"`` images."""
    result = (samples.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type in ("np", "pil"):
        result = result.permute(0, 2, 3, 1).numpy()
    return DiffusionPipeline.numpy_to_pil(result) if output_type == "pil" else result


def encode_conditions(vocab: LabelVocabulary, labels, num_images_per_prompt: int = 1) -> torch.Tensor:
    """Multi-hot conditions ``(batch * num_images_per_prompt, N)`` from one condition or a list of them (a pipeline's
    ``labels`` argument): a condition is a list of label names, a list of indices, or a multi-hot tensor; a batch is a
    list of conditions or a ``(batch, N)`` tensor."""
    if isinstance(labels, torch.Tensor):
        batch = vocab.encode_batch(labels[None] if labels.ndim == 1 else labels)
    elif isinstance(labels, (list, tuple)) and labels and all(isinstance(x, (str, int)) for x in labels):
        batch = vocab.encode(labels)[None]  # one condition
    else:
        batch = vocab.encode_batch(labels)
    return batch.repeat_interleave(num_images_per_prompt, dim=0)


def read_class_name_as_own(loaded):
    """A loaded pipeline config whose ``[module, class]`` ``_class_name`` is read as the bare class name."""
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    if isinstance(config.get("_class_name"), (list, tuple)):
        config["_class_name"] = config["_class_name"][-1]
    return loaded


def describe_input(value) -> str:
    """A short description of a value for error messages: a tensor's shape, else its type and repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"
