"""Finding submissions, unpacking zips safely, taking only student modules and answers."""
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from labkit.grading.course import student_modules
from labkit.grading.submission import Malformed, find_submissions, load_submission, unpack

REPO = Path(__file__).resolve().parent.parent
MODULES = student_modules(REPO)


def workbook(folder, answers=None):
    shutil.copytree(REPO / "labkit", folder / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "notebooks", folder / "notebooks")
    for grade_id, text in (answers or {}).items():
        for nb_path in (folder / "notebooks").glob("*.ipynb"):
            nb = json.loads(nb_path.read_text(encoding="utf-8"))
            for cell in nb["cells"]:
                if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
                    cell["source"] = text
            nb_path.write_text(json.dumps(nb), encoding="utf-8")
    return folder


def test_a_folder_of_submissions_gives_one_per_child_named_by_it(tmp_path):
    workbook(tmp_path / "class" / "ada")
    shutil.make_archive(str(tmp_path / "class" / "bob"), "zip", tmp_path / "class" / "ada")
    (tmp_path / "class" / "notes.txt").write_text("x")
    (tmp_path / "class" / ".DS_Store").write_text("x")
    found = find_submissions([tmp_path / "class"])
    assert [s for s, _ in found] == ["ada", "bob", "notes.txt"]
    assert find_submissions([tmp_path / "class" / "ada"]) == [("ada", tmp_path / "class" / "ada")]


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_submissions([tmp_path / "nowhere"])


def test_same_id_twice_is_refused(tmp_path):
    workbook(tmp_path / "a" / "ada")
    shutil.make_archive(str(tmp_path / "b" / "ada"), "zip", tmp_path / "a" / "ada")
    with pytest.raises(ValueError, match="ada"):
        find_submissions([tmp_path / "a", tmp_path / "b"])


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "labkit/../../evil.py", "C:/evil.py"])
def test_zip_with_escaping_paths_is_malformed_and_nothing_is_written(tmp_path, name):
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labkit/dataset.py", "x = 1\n")
        zf.writestr(name, "boom")
    with pytest.raises(Malformed, match="unsafe path"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.py").exists()


def test_zip_with_a_symlink_or_absurd_size_is_malformed(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("labkit/dataset.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(Malformed, match="link"):
        unpack(archive, tmp_path / "a")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labkit/big.bin", b"\0" * (201 * 2**20))
    with pytest.raises(Malformed, match="MB"):
        unpack(bomb, tmp_path / "b")


def test_a_broken_zip_is_malformed(tmp_path):
    (tmp_path / "s.zip").write_bytes(b"not a zip")
    sub = load_submission("s", tmp_path / "s.zip", MODULES, REPO, tmp_path / "scratch")
    assert "not a readable zip" in sub.malformed


def test_zip_with_a_top_folder_is_found_one_level_down(tmp_path):
    workbook(tmp_path / "src" / "metric-lab")
    shutil.make_archive(str(tmp_path / "ada"), "zip", tmp_path / "src")
    sub = load_submission("ada", tmp_path / "ada.zip", MODULES, REPO, tmp_path / "scratch")
    assert not sub.malformed and not sub.problems and sorted(sub.modules) == [1, 2, 3, 4]


def test_only_modules_and_answers_are_taken_and_problems_stay_per_task(tmp_path):
    folder = workbook(tmp_path / "ada", answers={"task3a_answer": "Means of the embeddings."})
    (folder / "labkit" / "model.py").write_text("def broken(:\n")
    (folder / "labkit" / "viz.py").unlink()
    (folder / "labkit" / "classify.py").write_text((REPO / "labkit/classify.py").read_text() + "\nimport subprocess\n")
    sub = load_submission("ada", folder, MODULES, REPO, tmp_path / "scratch")
    assert not sub.malformed
    assert "does not compile" in sub.problems[2] and "(line 1)" in sub.problems[2]
    assert "missing" in sub.problems[4] and 1 not in sub.problems and 3 not in sub.problems
    assert sub.answers["task3a_answer"] == "Means of the embeddings."
    assert sub.answers["task4_answer"] != ""  # the reference text, since this workbook copied it
    assert sub.flags == ["classify.py: subprocess"]


def test_no_labkit_is_malformed_with_what_to_hand_in(tmp_path):
    (tmp_path / "ada").mkdir()
    sub = load_submission("ada", tmp_path / "ada", MODULES, REPO, tmp_path / "scratch")
    assert "hand in the whole workbook folder" in sub.malformed
    sub = load_submission("x", tmp_path / "x.txt", MODULES, REPO, tmp_path / "scratch")
    assert "neither a folder nor a .zip" in sub.malformed
