import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_evaluator_prints_every_row():
    """The evaluator bench runs the trainer's own step on a tiny batch and prints one row per lever."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_evaluator.py"), "--train_batch_size", "4",
                             "--steps", "1", "--warmup", "1", "--train_images", "1000"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("fp32", "bf16", "+ channels_last"))]
    assert len(rows) == 4
    for row in rows:
        rate, minutes = float(row.split()[-3]), float(row.split()[-1])
        # both are printed rounded (rate to 0.1, minutes to 0.1): slow rows (bf16 emulated on AVX2 CPUs) magnify the rate's rounding
        assert rate > 0.05
        expected = 1000 / rate / 60
        assert abs(minutes - expected) <= expected * 0.05 / (rate - 0.05) + 0.051
