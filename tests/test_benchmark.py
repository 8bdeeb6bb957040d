"""The benchmark script runs end to end on a tiny slice (its figures are read by people, not tests)."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_split_files

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_pipeline.py"


@pytest.fixture(scope="module")
def bench_pipeline():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_pipeline
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_pipeline


def test_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--data", "sample", "--limit", "200",
         "--epochs", "1", "--seeds", "2", "--workers", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("train (s)", "class means (s)", "evaluate (s)", "whole lab (3b+3c+3e)", "peak host memory",
                "train step (ms, 192 images)", "x FLOP limit", "FLOP limit: a training step", "load average at end",
                "accuracy 3b (%)", "accuracy 3c (%)", "accuracy 3e (%)", "N =  70000"):
        assert row in out, row
    # both pipelines ran both seeds
    assert out.count("course seed") == 2 and out.count("fast seed") == 2
    assert "bf16 convolutions" in out and "compiled kernels (labkit.native): " in out


def test_step_flops_count_the_three_convolutions(bench_pipeline):
    # by hand: 1 -> 32 channels on 28 x 28, 32 -> 32 on 13 x 13 and on 6 x 6, 3 x 3 kernels, 'same' padding
    macs_per_image = 28 * 28 * 32 * 1 * 9 + 13 * 13 * 32 * 32 * 9 + 6 * 6 * 32 * 32 * 9
    assert bench_pipeline.step_flops(192) == 3 * 2 * 192 * macs_per_image


def test_data_dir_reads_idx_files_from_that_folder(bench_pipeline, tmp_path):
    raw = write_split_files(tmp_path / "raw", compress=True)
    name, train, test = bench_pipeline.load_data("sample", folder=raw)
    assert str(raw) in name and len(train.targets) == 30 and len(test.targets) == 10
    assert tuple(train.images.shape[1:]) == tuple(test.images.shape[1:]) == (28, 28)


@pytest.mark.parametrize("missing", ["folder", "labels"])
def test_data_dir_problems_are_one_line_errors(tmp_path, missing):
    raw = write_split_files(tmp_path / "raw")
    if missing == "folder":
        raw = tmp_path / "nowhere"
    else:
        (raw / "t10k-labels-idx1-ubyte").unlink()
    result = subprocess.run([sys.executable, str(BENCH), "--data-dir", str(raw), "--epochs", "1", "--seeds", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 if missing == "folder" else result.returncode == 1
    assert "Traceback" not in result.stderr
    assert ("no such folder" if missing == "folder" else "no t10k-labels-idx1-ubyte") in result.stderr


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
