import itertools

import pytest
import torch

import iclevr.utils
from iclevr.utils import measure_throughput


def test_throughput_counts_the_timed_images_over_the_timed_seconds(monkeypatch):
    """Warm-up steps run but are neither timed nor counted; the rate is images per second of the timed steps."""
    clock = itertools.count(start=100.0, step=0.5)  # each perf_counter call advances half a second
    monkeypatch.setattr(iclevr.utils.time, "perf_counter", lambda: next(clock))
    calls = []
    batches = ((torch.zeros(n, 3, 4, 4), torch.zeros(n, 24)) for n in (2, 2, 8, 8, 8))
    rate = measure_throughput(lambda images, labels: calls.append(images.shape[0]), batches, warmup=2, steps=3)
    assert calls == [2, 2, 8, 8, 8]
    assert rate == pytest.approx(24 / 0.5)  # 24 timed images between the two clock readings
