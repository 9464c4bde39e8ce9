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


def load_bench(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_compiling_pays_after_its_warm_up_over_the_time_it_saves():
    """100 steps: eager 1.0 s each plus 2 s of start; compiled 0.8 s each plus the same 2 s and 120 s of compiling.
    Saving 20 % of each step, compiling has paid for its 120 s after 10 minutes of training."""
    bench = load_bench("bench_train")
    eager = {"seconds_per_step": 1.0, "training_minutes": 102 / 60}
    compiled = {"seconds_per_step": 0.8, "training_minutes": 202 / 60}
    assert bench.break_even(eager, compiled, 100) == ("compile warm-up 120 s; 20.0 % of each step saved; compiling pays "
                                                      "after 10.0 minutes of training")
    slower = {"seconds_per_step": 1.1, "training_minutes": 232 / 60}
    assert bench.break_even(eager, slower, 100).startswith("compiling does not pay here: 1.100 s/step")


def test_the_profile_puts_each_op_in_its_kind():
    bench = load_bench("bench_profile")
    expected = {"aten::mkldnn_convolution": "convolution", "aten::convolution_backward": "convolution",
                "aten::native_group_norm_backward": "normalisation", "aten::_scaled_dot_product_flash_attention_for_cpu":
                "attention", "aten::addmm": "matmul (linear)", "aten::copy_": "copies / layout",
                "aten::silu_backward": "elementwise / activation / other", "aten::_foreach_mul_": "elementwise / activation / other"}
    assert {name: bench.kind_of(name) for name in expected} == expected
