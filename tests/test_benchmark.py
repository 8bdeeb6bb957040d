"""The benchmark script runs end to end on a tiny slice (its figures are read by people, not tests)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--data", "sample", "--limit", "200",
         "--epochs", "1", "--seeds", "2", "--workers", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("train (s)", "class means (s)", "evaluate (s)", "whole lab (3b+3c+3e)", "peak host memory",
                "accuracy 3b (%)", "accuracy 3c (%)", "accuracy 3e (%)", "N =  70000"):
        assert row in out, row
    # both pipelines ran both seeds
    assert out.count("course seed") == 2 and out.count("fast seed") == 2
    assert "bf16 convolutions" in out
