"""The student edition: solutions cut out, checked, instructor files left out, moved into place whole."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import make_student  # noqa: E402
from make_student import (ANSWER, MARKER, EditionError, drop_make_targets, make_student as make,  # noqa: E402
                          parse_repo_url, rewrite_urls, run_edition_tests, strip_solutions, task_points)

URL = "https://github.com/acme-course/metric-lab-2027"
NOTEBOOKS = ["01_data_loading", "02_model", "03_training_and_evaluation", "04_visualization"]


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    """One edition made as an instructor would, with the full check (its tests run in a subprocess)."""
    out = tmp_path_factory.mktemp("course") / "student"
    counts, failures = make(out, URL)
    return out, counts, failures


def cells(notebook):
    return json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]


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


def test_edition_modules_hold_only_the_placeholders(edition):
    out, counts, _ = edition
    assert counts == {"dataset.py": 3, "model.py": 5, "classify.py": 3, "viz.py": 1}
    for module, task in make_student.TASKS.items():
        text = (out / "labkit" / module).read_text()
        blocks = re.findall(r"# BEGIN SOLUTION\n(.*?)\n\s*# END SOLUTION", text, re.S)
        assert len(blocks) == counts[module]
        assert all(b.strip() == f'raise NotImplementedError("{task}: write this part in labkit/{module}")  '
                                '# YOUR CODE HERE' for b in blocks), blocks
    for fragment in ("self.classes.remove", "pca_lowrank(centred", "nan_to_num(nan=math.inf)", "vector_norm(a_x"):
        assert not any(fragment in p.read_text() for p in out.rglob("*.py")), fragment


def test_edition_tests_fail_only_where_a_task_is_unwritten(edition):
    _, _, failures = edition
    # the build ran them and accepted only NotImplementedError failures; Tasks 1-3 have unit tests
    assert all(failures[f"Task {t}: write this part in labkit/{m}"] > 0
               for t, m in ((1, "dataset.py"), (2, "model.py"), (3, "classify.py")))


def test_instructor_files_are_left_out(edition):
    out, _, _ = edition
    for path in ("scripts/make_student.py", "scripts/classroom.py", "scripts/edition", "scripts/make_sample.py",
                 "tests/test_student_edition.py", "tests/test_classroom.py", "tests/test_checks.py",
                 "tests/test_notebooks.py", "tests/test_benchmark.py", "benchmarks", ".ci"):
        assert not (out / path).exists(), path
    for path in ("labkit/checks.py", "labkit/_data/mnist_sample.npz", "tests/test_dataset.py", "tests/helpers.py",
                 "conftest.py", "pyproject.toml", "Makefile", ".github/workflows/classroom.yml", MARKER,
                 *(f"notebooks/{n}.ipynb" for n in NOTEBOOKS)):
        assert (out / path).exists(), path
    assert not list(out.rglob("__pycache__"))
    assert not [p for p in out.parent.iterdir() if p.name != "student"], "temporary folders left behind"


def test_answer_cells_become_the_placeholder(edition):
    out, _, _ = edition
    answers = {nb: [c for c in cells(out / "notebooks" / f"{nb}.ipynb")
                    if c["metadata"].get("nbgrader", {}).get("solution")] for nb in NOTEBOOKS}
    assert [len(a) for a in answers.values()] == [0, 0, 2, 1]
    assert all("".join(c["source"]) == ANSWER for a in answers.values() for c in a)
    reference = [c for c in cells(REPO / "notebooks" / "03_training_and_evaluation.ipynb")
                 if c["metadata"].get("nbgrader", {}).get("solution")]
    assert all(len("".join(c["source"])) > 100 for c in reference)  # the model answers stay with the instructor


def test_repo_url_reaches_badges_setup_cells_and_readme(edition):
    out, _, _ = edition
    for nb in NOTEBOOKS:
        text = (out / "notebooks" / f"{nb}.ipynb").read_text()
        assert f"https://colab.research.google.com/github/acme-course/metric-lab-2027/blob/main/notebooks/{nb}.ipynb" in text
        assert "metric-lab/metric-lab" not in text
    readme = (out / "README.md").read_text()
    assert URL in readme and "metric-lab/metric-lab" not in readme
    # the setup cell's one repository line (the Colab setup keeps exactly this form)
    cell = 'import sys\nREPO_URL = "https://github.com/metric-lab/metric-lab"\nsetup(REPO_URL)\n'
    assert rewrite_urls(cell, "acme-course", "metric-lab-2027") == cell.replace("metric-lab/metric-lab",
                                                                                 "acme-course/metric-lab-2027")


@pytest.mark.parametrize("url", ["http://github.com/a/b", "git@github.com:a/b.git", "https://gitlab.com/a/b",
                                 "https://github.com/a", "https://github.com/a/b/tree/main", "",
                                 "https://user:token@github.com/a/b", "https://github.com/a/b?x=1"])
def test_bad_repo_urls_are_refused_with_the_form_to_use(url, tmp_path):
    with pytest.raises(ValueError, match="https://github.com/OWNER/REPO"):
        make(tmp_path / "student", url)
    assert not (tmp_path / "student").exists()


def test_repo_url_forms():
    assert parse_repo_url("https://github.com/a-b/c.d.git") == ("a-b", "c.d")
    assert parse_repo_url("https://github.com/Course2027/lab/") == ("Course2027", "lab")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_student.py"), "--repo-url", "ftp://x"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "is not a https GitHub repository URL" in result.stderr


def test_readme_is_the_students(edition):
    out, _, _ = edition
    readme = (out / "README.md").read_text()
    positions = [readme.index(f"notebooks/{nb}.ipynb") for nb in NOTEBOOKS]
    assert positions == sorted(positions)
    for text in ("labkit/dataset.py", "labkit/model.py", "labkit/classify.py", "labkit/viz.py", "make check",
                 "make test", "YOUR ANSWER HERE", "GitHub Classroom", "| Task 1 | 10 |", "| Task 2 | 40 |",
                 "| Task 3 | 40 | 6 |", "| Task 4 | 10 | 2 |", "**100**"):
        assert text in readme, text
    assert "For instructors" not in readme and "make_student" not in readme and "{{" not in readme


def test_makefiles_have_check_and_the_edition_no_instructor_targets(edition):
    out, _, _ = edition
    reference, student = (REPO / "Makefile").read_text(), (out / "Makefile").read_text()
    for text in (reference, student):
        assert re.search(r"^check: .*\n\t\$\(BIN\)/python -m labkit\.grade --self$", text, re.M)
    assert re.search(r"^test:", student, re.M) and not re.search(r"^(bench|grade|student):", student, re.M)
    assert "bench" not in student.split(".PHONY:")[1].splitlines()[0]


def test_drop_make_targets():
    text = ".PHONY: a b c\na: x\n\techo a\n\techo a2\n\nb: a\n\techo b\n$(X): y\n\ttouch z\n"
    assert drop_make_targets(text, {"a"}) == ".PHONY: b c\n\nb: a\n\techo b\n$(X): y\n\ttouch z\n"


def test_points_come_from_the_notebooks_metadata():
    points = task_points(REPO / "notebooks")
    assert {t: auto for t, (auto, _) in points.items()} == {1: 10, 2: 40, 3: 40, 4: 10}  # the course's weights
    course = pytest.importorskip("labkit.grading.course")  # the grader's one mapping, where it exists
    assert course.WEIGHTS == {t: auto for t, (auto, _) in points.items()}
    assert {m: f"Task {t}" for m, t in course.TASKS.items()} == make_student.TASKS


def earlier_edition(tmp_path):
    out = tmp_path / "student"
    make(out, URL, run_tests=False)
    (out / "labkit" / "dataset.py").write_text("# the earlier edition\n")
    return out


def assert_untouched(out):
    assert (out / "labkit" / "dataset.py").read_text() == "# the earlier edition\n"
    assert (out / MARKER).exists()
    assert [p.name for p in out.parent.iterdir()] == ["student"], "a half-made edition was left behind"


def test_a_failed_check_leaves_the_earlier_edition(tmp_path, monkeypatch):
    out = earlier_edition(tmp_path)
    # a solution line survives the stripping: the check finds it and nothing is replaced
    monkeypatch.setattr(make_student, "strip_solutions", lambda text, label: (text, text.count("# BEGIN SOLUTION")))
    with pytest.raises(EditionError, match="reference solution line left in labkit/dataset.py:.*self.classes.remove"):
        make(out, URL, run_tests=False)
    assert_untouched(out)


def test_a_crash_midway_leaves_the_earlier_edition(tmp_path, monkeypatch):
    out = earlier_edition(tmp_path)

    def crash(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(make_student, "student_readme", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        make(out, URL, run_tests=False)
    assert_untouched(out)


def test_marker_is_written_after_the_check(tmp_path, monkeypatch):
    seen = []
    real_verify = make_student.verify

    def verify(folder, *args, **kwargs):
        seen.append((folder / MARKER).exists())
        return real_verify(folder, *args, **kwargs)
    monkeypatch.setattr(make_student, "verify", verify)
    make(tmp_path / "student", URL, run_tests=False)
    assert seen == [False] and (tmp_path / "student" / MARKER).exists()


def fake_edition(tmp_path, test_body):
    (tmp_path / "tests").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (tmp_path / "tests" / "test_x.py").write_text(
        "def test_unwritten():\n    raise NotImplementedError('Task 2: write this part in labkit/model.py')\n\n"
        "def test_fine():\n    pass\n\n" + test_body)
    return tmp_path


def test_edition_tests_accept_only_task_not_implemented_errors(tmp_path):
    assert run_edition_tests(fake_edition(tmp_path / "a", ""))["Task 2: write this part in labkit/model.py"] == 1
    with pytest.raises(EditionError, match="(?s)other than the unwritten tasks.*test_other: KeyError"):
        run_edition_tests(fake_edition(tmp_path / "b", "def test_other():\n    {}['x']\n"))
    with pytest.raises(EditionError, match="did not run"):
        run_edition_tests(fake_edition(tmp_path / "c", "def broken(:\n"))


def test_refuses_folders_whose_removal_would_lose_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for target in (tmp_path, REPO, REPO.parent, REPO / "labkit", REPO / "notebooks" / "x"):
        with pytest.raises(ValueError, match="choose"):
            make(target, run_tests=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    make(tmp_path / "edition", run_tests=False)  # an earlier edition is replaced
    (tmp_path / "edition" / "stale.txt").write_text("old")
    make(tmp_path / "edition", run_tests=False)
    assert not (tmp_path / "edition" / "stale.txt").exists()


def test_an_edition_cannot_be_made_from_an_edition(tmp_path):
    make(tmp_path / "edition", run_tests=False)
    script = tmp_path / "edition" / "scripts" / "make_student.py"  # an instructor copies it back
    script.write_text((REPO / "scripts" / "make_student.py").read_text())
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "again")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "is itself a student edition" in result.stderr
