"""A full disk during a save: the last good checkpoint and the previous pipeline stay loadable, no ``.partial``
folder is left, and the run stops with one line. The disk is filled by a patched writer that raises
``OSError(ENOSPC)``, the way a full disk surfaces (a small tmpfs needs mounting rights a test machine may lack)."""

import errno
import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

import iclevr.checkpoints
import train_conditional_ddpm
from iclevr.checkpoints import checkpoint_problem, save_checkpoint, verified_checkpoint
from pipeline_iclevr import ICLEVRPipeline

from .test_train import TINY


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(accelerator, tmp_path, monkeypatch):
    model, optimizer = accelerator.prepare(torch.nn.Linear(4, 4), torch.optim.AdamW(torch.nn.Linear(4, 4).parameters()))
    good = save_checkpoint(accelerator, tmp_path, 1)
    assert checkpoint_problem(good) is None and json.loads((good / "manifest.json").read_text())
    monkeypatch.setattr("accelerate.checkpointing.save", full_disk)
    with pytest.raises(SystemExit, match=r"Saving checkpoint-2 in .* failed \(\[Errno 28\] No space left on device\); removed "
                                         r"the partial save, and the checkpoints before it are kept"):
        save_checkpoint(accelerator, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"] and verified_checkpoint(tmp_path) == good


def test_the_free_space_is_checked_before_a_checkpoint_is_written(accelerator, tmp_path, monkeypatch):
    accelerator.prepare(torch.nn.Linear(64, 64))
    monkeypatch.setattr(iclevr.checkpoints.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SystemExit, match=r"Not enough disk space for checkpoint-1 in .*: 1,081,[0-9]{3} bytes needed, 1,000 free"):
        save_checkpoint(accelerator, tmp_path, 1)
    assert not list(tmp_path.iterdir())


def test_a_full_disk_during_the_final_save_keeps_the_previous_pipeline_with_its_samples(rendered_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    flags = ["--train_data_dir", str(rendered_dir), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *TINY,
             "--report_to", "none", "--validation_steps", "2", "--validation_inference_steps", "1", "--checkpointing_steps", "100"]
    AcceleratorState._reset_state(reset_partial_state=True)
    train_conditional_ddpm.main([*flags, "--max_train_steps", "2"])
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file() and "logs" not in p.parts}
    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit, match=r"Saving the pipeline in .* failed \(\[Errno 28\] No space left on device\); removed "
                                         "the partial save: the previous pipeline and the checkpoints are kept"):
        train_conditional_ddpm.main([*flags, "--max_train_steps", "4", "--seed", "5"])
    AcceleratorState._reset_state(reset_partial_state=True)
    assert not list(out.glob("*.partial"))
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "samples.png", "README.md", "train_summary.json"):
        assert (out / name).read_bytes() == before[name], name  # the picture, card and figures of the weights beside them
    ICLEVRPipeline.from_pretrained(out)
