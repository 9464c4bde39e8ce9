import itertools

import pytest
import torch

import iclevr.utils
from iclevr import ddpm
from iclevr.utils import measure_throughput

from .conftest import load_script


def test_throughput_counts_the_timed_images_over_the_timed_seconds(monkeypatch):
    """Warm-up steps run but are neither timed nor counted; the rate is images per second of the timed steps."""
    clock = itertools.count(start=100.0, step=0.5)  # each perf_counter call advances half a second
    monkeypatch.setattr(iclevr.utils.time, "perf_counter", lambda: next(clock))
    calls = []
    batches = ((torch.zeros(n, 3, 4, 4), torch.zeros(n, 24)) for n in (2, 2, 8, 8, 8))
    rate = measure_throughput(lambda images, labels: calls.append(images.shape[0]), batches, warmup=2, steps=3)
    assert calls == [2, 2, 8, 8, 8]
    assert rate == pytest.approx(24 / 0.5)  # 24 timed images between the two clock readings


def test_compiling_pays_after_its_warm_up_over_the_time_it_saves():
    """100 steps: eager 1.0 s each plus 2 s of start; compiled 0.8 s each plus the same 2 s and 120 s of compiling.
    Saving 20 % of each step, compiling has paid for its 120 s after 10 minutes of training."""
    bench = load_script("bench/bench_train.py")
    eager = {"seconds_per_step": 1.0, "training_minutes": 102 / 60}
    compiled = {"seconds_per_step": 0.8, "training_minutes": 202 / 60}
    assert bench.break_even(eager, compiled, 100) == ("compile warm-up 120 s; 20.0 % of each step saved; compiling pays "
                                                      "after 10.0 minutes of training")
    slower = {"seconds_per_step": 1.1, "training_minutes": 232 / 60}
    assert bench.break_even(eager, slower, 100).startswith("compiling does not pay here: 1.100 s/step")


def test_the_profile_puts_each_op_in_its_kind():
    bench = load_script("bench/bench_profile.py")
    expected = {"aten::mkldnn_convolution": "convolution", "aten::convolution_backward": "convolution",
                "aten::native_group_norm_backward": "normalisation", "aten::_scaled_dot_product_flash_attention_for_cpu":
                "attention", "aten::addmm": "matmul (linear)", "aten::copy_": "copies / layout",
                "aten::silu_backward": "elementwise / activation / other", "aten::_foreach_mul_": "elementwise / activation / other"}
    assert {name: bench.kind_of(name) for name in expected} == expected


TINY_MODEL = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8", "--train_batch_size", "4"]


@pytest.mark.parametrize("part", ["attention", "group_norm"])
def test_the_shapes_bench_runs_one_part_in_fp32_inside_bf16_autocast(part):
    """Only that part changes precision: it hands back the dtype it was given, so the rest of the model runs as
    before, and the model's output stays what the default computes (to bf16 rounding)."""
    bench = load_script("bench/bench_train.py")
    args = ddpm.parse_args(TINY_MODEL)
    torch.manual_seed(0)
    default, changed = ddpm.build_model(args).eval(), ddpm.build_model(args).eval()
    changed.load_state_dict(default.state_dict())
    bench.in_fp32(changed, part)
    kind = torch.nn.GroupNorm if part == "group_norm" else type(next(m for m in changed.modules() if hasattr(m, "processor")))
    seen = []
    for module in changed.modules():
        if isinstance(module, kind):
            module.register_forward_hook(lambda _, inputs, output: seen.append((output.dtype, inputs[0].dtype)))
    sample, timesteps, labels = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.zeros(2, 24)
    labels[:, 3] = 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = default(sample, timesteps, encoder_hidden_states=None, class_labels=labels).sample
        got = changed(sample, timesteps, encoder_hidden_states=None, class_labels=labels).sample
    assert seen and all(output == given for output, given in seen)
    assert torch.allclose(got.float(), want.float(), atol=0.1)
    if part == "attention":
        assert all(isinstance(p, bench.Fp32Attention) for p in changed.attn_processors.values())


def test_the_shapes_bench_counts_more_flops_for_a_wider_model():
    """The FLOP count is the forward + backward of the real step: a model twice as wide costs about four times as
    much (convolutions scale with the square of the width), and removing attention costs less."""
    bench = load_script("bench/bench_train.py")
    images, labels = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8), torch.zeros(4, 24)
    base = bench.flops_per_image(ddpm.parse_args(TINY_MODEL), False, None, images, labels)
    wide = bench.flops_per_image(ddpm.parse_args([*TINY_MODEL, "--block_out_channels", "16,32"]), False, None, images, labels)
    bare = bench.flops_per_image(ddpm.parse_args([*TINY_MODEL, "--attention_levels", "0,0"]), False, None, images, labels)
    assert 3.0 < wide / base < 4.5
    assert bare < base
