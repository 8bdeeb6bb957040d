"""The student edition: solutions cut out, everything else intact, and the checks then fail."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from make_student import make_student, strip_solutions  # noqa: E402


def test_strip_solutions_keeps_indentation_and_code_around():
    text = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    y = x * 2\n    # END SOLUTION\n    return y\n"
    out, blocks = strip_solutions(text, "Task 9")
    assert blocks == 1
    assert out == 'def f(x):\n    y = 1\n    raise NotImplementedError("Task 9")  # YOUR CODE HERE\n    return y\n'


@pytest.mark.parametrize("text", ["# BEGIN SOLUTION\nx\n", "x\n# END SOLUTION\n",
                                  "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n"])
def test_unbalanced_markers_are_errors(text):
    with pytest.raises(ValueError, match="SOLUTION"):
        strip_solutions(text, "t")


def test_student_edition_has_no_solutions_and_fails_its_checks(tmp_path):
    counts = make_student(tmp_path / "student")
    assert set(counts) == {"dataset.py", "model.py", "classify.py"}
    pkg = tmp_path / "student" / "labkit"
    for module in pkg.glob("*.py"):
        assert "BEGIN SOLUTION" not in module.read_text()
    assert (tmp_path / "student" / "notebooks" / "01_data_loading.ipynb").exists()
    code = ("from labkit.dataset import MNISTMetricDataset\n"
            "from labkit import checks\n"
            "ds = MNISTMetricDataset(split='train', source='sample')\n"
            "try:\n    ds._sample_positive(0)\nexcept NotImplementedError as e:\n    print('raised:', e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "student"), "LABKIT_DATA": "sample",
                                 "PATH": "/usr/bin:/bin"})
    assert "raised: Task 1: write this part in labkit/dataset.py" in result.stdout, result.stderr
