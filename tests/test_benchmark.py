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


def test_recipe_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_recipes.py"), "--data", "sample", "--limit", "400",
         "--epochs", "1", "--seeds", "2", "--recipes", "random triplets", "semi-hard"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "CPUs (" in out and "bf16 convolutions" in out
    assert out.count("random triplets seed") == 2 and out.count("semi-hard seed") == 2
    table = out.split("figures in %:")[1]
    assert "random triplets" in table and "semi-hard" in table and "MAP@R" in table and "±" in table
