"""One task run on a tiny reference: signed streaming, selection of marked tests, limits, cleanup."""
import shutil
from pathlib import Path

import nbformat
import psutil
import pytest

from labkit.grading import report
from labkit.grading.grader import task_checks
from labkit.grading.runner import Limits, Runner

REPO = Path(__file__).resolve().parent.parent
HONEST = 'def answer():\n    return "✔ 42"\n'
FORGER = HONEST + '''
import os, sys
if "pytest" in sys.modules:  # in the test process (not the kernel): forge a pass, then leave
    for fd in range(3, 64):
        try:
            os.write(fd, b'0000 {"id": "tests/test_tiny.py::test_skipped", "when": "call", "outcome": "passed"}\\n')
        except OSError:
            pass
    os._exit(0)
'''
DIER = 'import os, sys\nif "ipykernel_launcher" in sys.argv[0]:  # in the nbval kernel only\n    os._exit(0)\n' + HONEST
LOOPER = 'def answer():\n    while True:\n        pass\n'
TESTS = '''import pytest

@pytest.mark.task(1, points=1)
def test_first():
    assert True

@pytest.mark.task(1, points=1)
def test_skipped():
    pytest.skip("a skip scores nothing")

@pytest.mark.task(1, points=2)
def test_module():
    from labkit import dataset
    assert dataset.answer() == "✔ 42"

@pytest.mark.task(2, points=5)
def test_other_task():
    raise AssertionError("never runs in a Task 1 run")

def test_unmarked():
    raise AssertionError("never runs: not a task test")
'''


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("tiny")
    (ref / "labkit").mkdir()
    (ref / "labkit" / "__init__.py").write_text("")
    shutil.copytree(REPO / "labkit" / "grading", ref / "labkit" / "grading",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (ref / "labkit" / "dataset.py").write_text("def answer():\n    # BEGIN SOLUTION\n    return '✔ 42'\n"
                                               "    # END SOLUTION\n")
    (ref / "tests").mkdir()
    (ref / "tests" / "test_tiny.py").write_text(TESTS)
    nb = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell("from labkit import dataset", execution_count=1)
    check = nbformat.v4.new_code_cell("print(dataset.answer())", execution_count=2, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="✔ 42\n")])
    check.metadata["nbgrader"] = {"grade": True, "grade_id": "task1_answer", "points": 3, "solution": False}
    nb.cells = [setup, check]
    (ref / "notebooks").mkdir()
    nbformat.write(nb, ref / "notebooks" / "01_tiny.ipynb")
    return ref


def run(ref, tmp_path, module, timeout=120, hidden=None):
    runner = Runner(ref, tmp_path / "out", Limits(timeout=timeout, memory_mb=0), hidden=hidden)
    result = runner.run(1, module, "labkit/dataset.py")
    checks, tests = task_checks(ref, hidden, 1)
    return result, {c["name"]: c["points"] for c in report.score_task(result, checks, tests)}


def test_passes_count_skips_and_other_tasks_do_not_hidden_tests_too(tiny_reference, tmp_path):
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "test_secret.py").write_text(
        "import pytest\n\n@pytest.mark.task(1, points=4)\ndef test_hidden():\n"
        "    from labkit import dataset\n    assert dataset.answer().endswith('42')\n\n"
        "@pytest.mark.task(1, points=1)\ndef test_hidden_fails():\n    assert False\n")
    result, points = run(tiny_reference, tmp_path, HONEST, hidden=tmp_path / "hidden")
    assert result["status"] == "ok" and result["forged"] == 0
    assert points == {"task1_answer": 3, "test_first": 1, "test_skipped": 0, "test_module": 2, "test_hidden": 4,
                      "test_hidden_fails": 0}
    assert not any("test_other_task" in e["id"] or "test_unmarked" in e["id"] for e in result["events"])


def test_forged_lines_are_ignored_and_exiting_keeps_only_what_passed_before(tiny_reference, tmp_path):
    result, points = run(tiny_reference, tmp_path, FORGER)
    assert result["status"] == "error" and result["forged"] > 0
    assert points == {"task1_answer": 3, "test_first": 1, "test_skipped": 0, "test_module": 0}


def test_a_kernel_that_dies_fails_its_cells_at_once_and_the_run_goes_on(tiny_reference, tmp_path):
    result, points = run(tiny_reference, tmp_path, DIER, timeout=120)
    assert result["status"] == "ok" and result["seconds"] < 100  # not stuck until the limit
    assert points == {"task1_answer": 0, "test_first": 1, "test_skipped": 0, "test_module": 2}


def test_a_loop_is_cut_at_the_limit_and_every_process_of_the_run_is_gone(tiny_reference, tmp_path):
    result, points = run(tiny_reference, tmp_path, LOOPER, timeout=40)
    assert result["status"] == "timeout" and 40 <= result["seconds"] < 60
    assert points["task1_answer"] == 0
    survivors = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("LABKIT_GRADE_RUN") == result["tag"]:
                survivors.append(p.pid)
        except psutil.Error:
            continue
    assert survivors == []


def test_task_runs_get_the_notebooks_own_epochs_unless_the_grader_is_told(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_EPOCHS", "1")  # the grader's own environment never reaches a run
    assert "LABKIT_EPOCHS" not in Runner(tmp_path, tmp_path / "out")._env(tmp_path, task=3)
    assert Runner(tmp_path, tmp_path / "out", Limits(epochs=4))._env(tmp_path, task=3)["LABKIT_EPOCHS"] == "4"
