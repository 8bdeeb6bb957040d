"""The fixture class: a class of submissions, honest and tampered, graded once in one run.

Each submission is built here from the reference files with one mutation (no copies of the modules
are committed). The table below is what the grader must give; ``None`` means "the course weight".
"""
import json
import re
import shutil
from pathlib import Path

import pytest

from labkit.grading import Limits, grade
from labkit.grading.course import WEIGHTS

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(^[ \t]*# BEGIN SOLUTION\n).*?(^[ \t]*# END SOLUTION\n)", re.M | re.S)
FULL = WEIGHTS
TIMEOUT = 150  # seconds per task run: the looping submission is cut here


def unsolved(text):
    """A module as the student edition hands it out: every solution block raises NotImplementedError."""
    return BLOCK.sub(lambda m: m.group(1) + re.match(r"[ \t]*", m.group(1)).group(0)
                     + 'raise NotImplementedError("not done")\n' + m.group(2), text)


def replace(text, old, new):
    assert old in text, f"the reference no longer holds {old!r}: update the fixture class"
    return text.replace(old, new)


def edit_notebook(path, change):
    nb = json.loads(path.read_text(encoding="utf-8"))
    change(nb)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def graded(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade") and cell["cell_type"] == "code"


def delete_checks(nb):
    nb["cells"] = [c for c in nb["cells"] if not graded(c)]


def skip_everything(nb):
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["metadata"].setdefault("tags", []).append("nbval-skip")


def show_cross_as_expected(nb):  # stored outputs edited to match a wrong sampler's ✘ line
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = [t.replace("✔ negatives come from another class (6400/6400)",
                                         "✘ negatives come from another class (0/6400)") for t in out["text"]]


FAKE_CHECKS = '''"""Every check passes."""
def __getattr__(name):
    return lambda *args, **kwargs: print("✔ all good")
'''
FORCE_PASS = '''import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome, report.longrepr = "passed", None
'''
PATCH_CHECKS = '''
import labkit.checks as _c  # tampering from inside a student module: every line printed as a pass
_c._line = lambda ok, text: print(f"✔ {text}")
'''

# name: (module edits {file: function(text) -> text}, other files {path: text or notebook change},
#        expected points per task (a number or a range; tasks not named: full), honest twin whose
#        score it must not exceed)
ONLY_TASK1 = {m: unsolved for m in ("model.py", "classify.py", "viz.py")}
SQUEEZE = lambda t: replace(t, "x = self.net(img).flatten(1)", "x = self.net(img).squeeze()")  # noqa: E731
NEGATIVE = {"dataset.py": lambda t: replace(t, "others = [c for c in self.classes if c != anchor_class]",
                                            "others = [anchor_class]")}
CLASS = {
    "correct": ({}, {}, {}, None),
    "negative_same_class": (NEGATIVE, {}, {1: 5}, None),
    "squeeze": ({"model.py": SQUEEZE}, {}, {2: 20}, None),
    "squared_distances": ({"model.py": lambda t: replace(replace(
        t, "d_pos = torch.linalg.vector_norm(a_x - p_x + eps, dim=1)", "d_pos = (a_x - p_x).pow(2).sum(1)"),
        "d_neg = torch.linalg.vector_norm(a_x - n_x + eps, dim=1)", "d_neg = (a_x - n_x).pow(2).sum(1)")},
        {}, {2: 20}, None),
    "sum_not_mean": ({"model.py": lambda t: replace(t, "loss = torch.relu(d_pos - d_neg + self.margin).mean()",
                                                    "loss = torch.relu(d_pos - d_neg + self.margin).sum()")},
                     {}, {2: 20}, None),
    # loses at least the two checks of class means (12 + 8); the end-to-end checks may pass or not
    "unnormalised_means": ({"classify.py": lambda t: replace(t, "means = F.normalize(means, dim=1)", "pass")},
                           {}, {3: range(0, 21)}, None),
    "only_task1": (ONLY_TASK1, {}, {2: 0, 3: 0, 4: 0}, None),
    "fake_checks": (ONLY_TASK1, {"labkit/checks.py": FAKE_CHECKS}, {2: 0, 3: 0, 4: 0}, "only_task1"),
    "conftest_forces_pass": (ONLY_TASK1, {"conftest.py": FORCE_PASS, "tests/conftest.py": FORCE_PASS,
                                          "notebooks/conftest.py": FORCE_PASS, "pytest.ini": "[pytest]\naddopts = -p no:nbval\n"},
                             {2: 0, 3: 0, 4: 0}, "only_task1"),
    "checks_deleted_or_skipped": (ONLY_TASK1, {"notebooks/02_model.ipynb": delete_checks,
                                               "notebooks/03_training_and_evaluation.ipynb": skip_everything,
                                               "notebooks/04_visualization.ipynb": skip_everything},
                                  {2: 0, 3: 0, 4: 0}, "only_task1"),
    "edited_outputs": (NEGATIVE, {"notebooks/01_data_loading.ipynb": show_cross_as_expected}, {1: 5},
                       "negative_same_class"),
    "exit_at_import": ({"dataset.py": lambda t: t.replace("\nimport torch\n", "\nimport os\nimport torch\n", 1)
                        + "\nos._exit(0)\n"}, {}, {1: 0}, None),
    "infinite_loop": ({"dataset.py": lambda t: t + "\nwhile True:\n    pass\n"}, {}, {1: 0}, None),
    # not prevented, only flagged: student code runs in the kernel beside the checks (see README)
    "patched_checks": ({"model.py": lambda t: SQUEEZE(t) + PATCH_CHECKS}, {}, None, "squeeze"),
}


def make_submission(folder, module_edits, files):
    shutil.copytree(REPO / "labkit", folder / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "notebooks", folder / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for module, edit in module_edits.items():
        path = folder / "labkit" / module
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            edit_notebook(path, content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.fixture(scope="session")
def graded_class(tmp_path_factory):
    """The fixture class graded once per test session with --jobs 2; (rows by student, maxima, out)."""
    root = tmp_path_factory.mktemp("class")
    for name, (module_edits, files, _, _) in CLASS.items():
        make_submission(root / "submissions" / name, module_edits, files)
    shutil.make_archive(str(root / "submissions" / "correct_zipped"), "zip", root / "submissions" / "correct")
    (root / "submissions" / "not_a_workbook.txt").write_text("my homework\n")
    rows, maxima = grade([root / "submissions"], root / "out", REPO, limits=Limits(timeout=TIMEOUT), jobs=2,
                         log=lambda text: None)
    return {r["student"]: r for r in rows}, maxima, root / "out"


def test_the_course_weights_are_the_points(graded_class):
    _, maxima, _ = graded_class
    assert maxima == WEIGHTS


@pytest.mark.parametrize("name", [n for n, spec in CLASS.items() if spec[2] is not None])
def test_each_submission_gets_its_tasks_points(graded_class, name):
    rows, _, _ = graded_class
    for task, full in FULL.items():
        expected = CLASS[name][2].get(task, full)
        got = rows[name]["tasks"][task]
        assert got in expected if isinstance(expected, range) else got == expected, (task, rows[name]["detail"])


def test_the_correct_submission_scores_100_as_folder_and_as_zip(graded_class):
    rows, _, _ = graded_class
    for name in ("correct", "correct_zipped"):
        assert rows[name]["total"] == 100 and rows[name]["status"] == "ok" and not rows[name]["flags"]


@pytest.mark.parametrize("name", [n for n, spec in CLASS.items() if spec[3]])
def test_tampering_never_scores_more_than_the_honest_code(graded_class, name):
    rows, _, _ = graded_class
    assert rows[name]["total"] <= rows[CLASS[name][3]]["total"] or rows[name]["flags"]


def test_tampering_inside_a_student_module_is_flagged(graded_class):
    rows, _, _ = graded_class
    assert any("labkit.checks" in flag for flag in rows["patched_checks"]["flags"])
    assert any("os._exit" in flag for flag in rows["exit_at_import"]["flags"])


def test_the_loop_is_cut_at_the_limit_and_the_other_tasks_keep_their_points(graded_class):
    rows, _, _ = graded_class
    row = rows["infinite_loop"]
    assert row["status"] == "timeout" and row["detail"][1]["status"] == "timeout"
    assert [row["detail"][t]["status"] for t in (2, 3, 4)] == ["ok"] * 3
    assert row["total"] == 90


def test_a_malformed_submission_gets_a_row_and_stops_nothing(graded_class):
    rows, _, out = graded_class
    assert rows["not_a_workbook.txt"]["status"] == "malformed" and rows["not_a_workbook.txt"]["total"] == 0
    lines = (out / "grades.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "student,task1,task2,task3,task4,total,status,seconds,flagged"
    assert len(lines) == 1 + len(CLASS) + 2


def test_feedback_holds_the_check_lines_and_the_answers(graded_class):
    _, _, out = graded_class
    text = (out / "feedback" / "negative_same_class.md").read_text(encoding="utf-8")
    assert "✘ negatives come from another class (0/6400)" in text
    assert "✔ negatives come from another class (6400/6400)" in text  # what the reference prints
    assert "## Task 2: 40 / 40" in text and "### task3a_answer" in text
    answers = (out / "answers.csv").read_text(encoding="utf-8")
    assert answers.count("negative_same_class,task3a_answer,4,") == 1
