# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A run's wall time: training time with validation kept out, the ``--max_train_minutes`` budget, and throughput."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast


class Stopwatch:
    """A run's wall time, with pauses (validation) kept out of the training time, and its throughput measured from the
    first optimiser step on (the first step pays for kernel selection and allocation, which later ones do not)."""

    def __init__(self):
        self.start = time.time()
        self.paused_seconds = 0.0
        self.images = 0
        self._first = None  # (time, images, step) at the first optimiser step

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.paused_seconds += time.time() - start

    def count(self, images: int, step: int) -> None:
        """Record a batch of ``images`` trained on; ``step`` is the optimiser step reached after it."""
        self.images += images
        if self._first is None and step > 0:
            self._first = (time.time(), self.images, step)

    @property
    def training_seconds(self) -> float:
        return time.time() - self.start - self.paused_seconds

    def out_of_time(self, accelerator: Accelerator, budget_minutes: float | None) -> bool:
        """Whether ``budget_minutes`` of training time are spent. Every process gets rank 0's answer, so all of them
        stop at the same step (their clocks differ slightly)."""
        if budget_minutes is None:
            return False
        done = torch.tensor([float(self.training_seconds >= budget_minutes * 60)], device=accelerator.device)
        if accelerator.num_processes > 1:
            done = broadcast(done, from_process=0)
        return bool(done.item())

    def figures(self, step: int) -> dict:
        """The time figures of a run's ``train_summary.json``: images seen, images/s and seconds per step (`rates`),
        and the minutes in all and in training."""
        images_per_second, seconds_per_step = self.rates(step)
        return {"images_seen": self.images, "images_per_second": images_per_second, "seconds_per_step": seconds_per_step,
                "minutes": (self.training_seconds + self.paused_seconds) / 60, "training_minutes": self.training_seconds / 60}

    def rates(self, step: int) -> tuple[float, float | None]:
        """Images per second and seconds per optimiser step since the first step (pauses all fall after it);
        ``(0, None)`` when no step was timed."""
        if self._first is None or step <= self._first[2]:
            return 0.0, None
        timed = max(time.time() - self._first[0] - self.paused_seconds, 1e-9)
        return (self.images - self._first[1]) / timed, timed / (step - self._first[2])
