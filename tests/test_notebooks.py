"""The notebooks as tests: nbval must catch a wrong solution through the check cells' stored output."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))


def run_nbval(notebook, labkit_dir, tmp_path):
    """Run nbval on a copy of ``notebook`` in a fresh process whose kernel imports ``labkit_dir``."""
    shutil.copy(notebook, tmp_path / notebook.name)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, PYTHONPATH=str(labkit_dir.parent))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), str(tmp_path / notebook.name)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )


def broken_labkit(tmp_path, module, old, new):
    """A copy of labkit with one line of the reference solution replaced."""
    target = tmp_path / "pkg" / "labkit"
    shutil.copytree(REPO / "labkit", target, ignore=shutil.ignore_patterns("__pycache__"))
    source = (target / module).read_text()
    if old not in source:  # a student edition holds the student's code, not the reference line
        pytest.skip(f"the reference line is not in labkit/{module}")
    (target / module).write_text(source.replace(old, new))
    return target


def test_nbval_fails_when_negatives_come_from_the_anchors_class(tmp_path):
    labkit_dir = broken_labkit(tmp_path, "dataset.py", "others = [c for c in self.classes if c != anchor_class]",
                               "others = [anchor_class]")
    result = run_nbval(REPO / "notebooks" / "01_data_loading.ipynb", labkit_dir, tmp_path)
    assert result.returncode != 0, result.stdout
    assert "✘ negatives come from another class" in result.stdout


def test_nbval_passes_with_the_reference_solution_copy(tmp_path):
    # the same machinery with an unchanged copy: the failure above comes from the broken line alone
    labkit_dir = broken_labkit(tmp_path, "dataset.py", "", "")
    result = run_nbval(REPO / "notebooks" / "01_data_loading.ipynb", labkit_dir, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_are_small_and_free_of_machine_details(notebook):
    assert notebook.stat().st_size < 1_500_000
    nb = nbformat.read(notebook, as_version=4)
    text = nbformat.writes(nb)
    assert not re.search(r"/(home|root|work|tmp|Users)/[A-Za-z]", text), "absolute path in stored output"
    assert not re.search(r"0x[0-9a-f]{8,}", text), "memory address in stored output"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"stored notebook was not executed: {cell.source[:60]!r}"
        assert not any(o.output_type == "error" for o in cell.outputs)
        tags = cell.metadata.get("tags", [])
        compared = "nbval-ignore-output" not in tags and "nbval-skip" not in tags
        if compared:  # compared output must not hold timings
            for o in cell.outputs:
                assert not re.search(r"\d+(\.\d+)? ?(s|ms|sec)\b", o.get("text", "")), o.get("text")
