"""What is graded: student modules by marker, graded cells with nbval's numbering, points per task."""
import json
from pathlib import Path

import nbformat
import pytest

from labkit.grading.course import (TASKS, WEIGHTS, answer_cells, graded_cells, marked_tests, notebook_of,
                                   student_modules, task_of)

REPO = Path(__file__).resolve().parent.parent


def test_student_modules_are_found_by_their_markers():
    assert student_modules(REPO) == {t: f"labkit/{m}" for m, t in TASKS.items()}


def test_a_marked_module_without_a_task_is_an_error(tmp_path):
    (tmp_path / "labkit").mkdir()
    (tmp_path / "labkit" / "extra.py").write_text("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n")
    with pytest.raises(ValueError, match="extra.py.*TASKS"):
        student_modules(tmp_path)


def test_graded_cells_use_nbvals_code_cell_numbers_and_sum_to_the_weights():
    for task in WEIGHTS:
        notebook = notebook_of(REPO, task)
        nb = nbformat.read(notebook, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]  # nbval numbers code cells only
        cells = graded_cells(notebook)
        assert {c["task"] for c in cells} == {task}
        for c in cells:
            assert code[c["cell"]].metadata["nbgrader"]["grade_id"] == c["grade_id"]
            assert c["expected"].startswith("✔")
        assert sum(c["points"] for c in cells) == WEIGHTS[task]


def test_answer_cells_are_the_manually_graded_markdown():
    answers = {}
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        answers.update(answer_cells(nb))
    assert {g: p for g, (p, _) in answers.items()} == {"task3a_answer": 4, "task3e_answer": 2, "task4_answer": 2}


def test_task_of_reads_the_digit_after_task():
    assert task_of("task3_classify") == 3
    with pytest.raises(ValueError, match="task<N>"):
        task_of("bonus")


def test_marked_tests_read_task_and_points_without_importing(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.task(2, points=3)\ndef test_a():\n    raise SystemExit\n\n"
        "@pytest.mark.task(1)\ndef test_b():\n    pass\n\ndef test_c():\n    pass\n")
    assert marked_tests(tmp_path / "test_x.py") == {"test_a": (2, 3), "test_b": (1, 1)}
