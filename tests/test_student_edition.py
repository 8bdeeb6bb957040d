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
    assert out == ('def f(x):\n    y = 1\n    # BEGIN SOLUTION\n'
                   '    raise NotImplementedError("Task 9")  # YOUR CODE HERE\n    # END SOLUTION\n    return y\n')


@pytest.mark.parametrize("text", ["# BEGIN SOLUTION\nx\n", "x\n# END SOLUTION\n",
                                  "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n"])
def test_unbalanced_markers_are_errors(text):
    with pytest.raises(ValueError, match="SOLUTION"):
        strip_solutions(text, "t")


def test_student_edition_has_no_solutions_and_fails_its_checks(tmp_path):
    counts = make_student(tmp_path / "student")
    assert set(counts) == {"dataset.py", "model.py", "classify.py", "viz.py"}
    pkg = tmp_path / "student" / "labkit"
    assert "self.classes.remove" not in (pkg / "dataset.py").read_text()  # the solution is gone...
    assert "# BEGIN SOLUTION" in (pkg / "dataset.py").read_text()  # ...the place for it is marked
    assert not (tmp_path / "student" / "tests" / "test_student_edition.py").exists()
    assert (tmp_path / "student" / "notebooks" / "01_data_loading.ipynb").exists()
    code = ("from labkit.dataset import MNISTMetricDataset\n"
            "from labkit import checks\n"
            "ds = MNISTMetricDataset(split='train', source='sample')\n"
            "try:\n    ds._sample_positive(0)\nexcept NotImplementedError as e:\n    print('raised:', e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "student"), "LABKIT_DATA": "sample",
                                 "PATH": "/usr/bin:/bin"})
    assert "raised: Task 1: write this part in labkit/dataset.py" in result.stdout, result.stderr


def test_refuses_folders_whose_removal_would_lose_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for target in (tmp_path, REPO, REPO.parent, REPO / "labkit", REPO / "notebooks" / "x"):
        with pytest.raises(ValueError, match="choose"):
            make_student(target)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # an earlier edition is replaced
    make_student(tmp_path / "edition")
    (tmp_path / "edition" / "stale.txt").write_text("old")
    make_student(tmp_path / "edition")
    assert not (tmp_path / "edition" / "stale.txt").exists()


def test_an_edition_cannot_be_made_from_an_edition(tmp_path):
    make_student(tmp_path / "edition")
    script = tmp_path / "edition" / "scripts" / "make_student.py"  # an instructor copies it back
    script.write_text((REPO / "scripts" / "make_student.py").read_text())
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "again")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "is itself a student edition" in result.stderr
