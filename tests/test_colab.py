"""The notebooks' Colab setup without Colab: a stand-in ``google.colab``, a temporary folder as
Google Drive and a local git repository as the workbook's address.

Each setup cell runs in a real kernel (nbclient). The editable pip install is skipped
(``LABKIT_COLAB_INSTALL=0``): it would install into this very environment; the clone is put first on
``sys.path`` by the cell itself, which is what makes it importable in the runtime that runs the cell.
"""
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
# the repository the workbook lives at: metric-lab/metric-lab, or the course's own in a student edition
URL_LINE = re.compile(r'REPO_URL = "https://github\.com/(?P<repo>[\w.-]+/[\w.-]+)"')
BADGE = re.compile(r"https://colab\.research\.google\.com/github/(?P<repo>[\w.-]+/[\w.-]+)/blob/main/notebooks/"
                   r"(\d\d_\w+\.ipynb)")
END_OF_COLAB_PART = "labkit.colab.setup(WORKBOOK)"


def setup_cell(notebook):
    nb = nbformat.read(notebook, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def colab_part(source):
    """The cell up to and including the ``labkit.colab.setup`` line: what must be the same everywhere."""
    lines = source.splitlines()
    ends = [i for i, line in enumerate(lines) if END_OF_COLAB_PART in line]
    assert len(ends) == 1, f"the setup cell must call {END_OF_COLAB_PART} exactly once"
    return "\n".join(lines[:ends[0] + 1])


def test_every_setup_cell_has_the_same_colab_part():
    parts = {nb.name: colab_part(setup_cell(nb)) for nb in NOTEBOOKS}
    first = parts[NOTEBOOKS[0].name]
    for name, part in parts.items():
        assert part == first, f"{name}'s setup cell differs in its Colab part from {NOTEBOOKS[0].name}'s"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_repository_url_is_one_line_and_the_badge_names_the_notebook(notebook):
    source = setup_cell(notebook)
    lines = [line for line in source.splitlines() if "github.com" in line]
    assert len(lines) == 1 and URL_LINE.fullmatch(lines[0]), lines
    assert "2>/dev/null" not in source and "|| true" not in source
    badges = list(BADGE.finditer(nbformat.read(notebook, as_version=4).cells[0].source))
    assert [b.group(2) for b in badges] == [notebook.name]
    assert badges[0].group("repo") == URL_LINE.fullmatch(lines[0]).group("repo")  # badge and clone agree


def make_stand_in_colab(folder):
    """A ``google.colab`` package whose ``drive.mount(path)`` makes ``path/MyDrive`` and logs the call."""
    package = folder / "google" / "colab"  # google/ stays a namespace package, as on Colab
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "drive.py").write_text(textwrap.dedent("""\
        import os

        def mount(mountpoint, **kwargs):
            os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
            with open(os.path.join(mountpoint, "mounts.log"), "a") as log:
                log.write(mountpoint + "\\n")
        """))
    return folder


def make_origin(folder):
    """A git repository with this checkout's labkit and notebooks (working tree, not HEAD)."""
    shutil.copytree(REPO / "labkit", folder / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "notebooks", folder / "notebooks", ignore=shutil.ignore_patterns(".*", "outputs", "data"))
    shutil.copy(REPO / "pyproject.toml", folder)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "workbook"]):
        subprocess.run(git + args, cwd=folder, check=True, capture_output=True)
    return folder


def run_setup(notebook, drive, url, stand_in, extra=""):
    """Run ``notebook``'s setup cell as Colab would (``google.colab`` imported) plus ``extra``; the
    text the cells printed, or the CellExecutionError."""
    cells = [nbformat.v4.new_code_cell("import google.colab"),
             nbformat.v4.new_code_cell(setup_cell(notebook)),
             nbformat.v4.new_code_cell(extra)]
    nb = nbformat.v4.new_notebook(cells=cells)
    env = dict(os.environ, LABKIT_DRIVE=str(drive), LABKIT_REPO_URL=str(url), LABKIT_COLAB_INSTALL="0",
               PYTHONPATH=str(stand_in))  # not this checkout: labkit must come from the clone
    drive.mkdir(exist_ok=True)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(drive)}})
    try:
        client.execute(env=env)  # handed to the kernel manager's start_kernel
    except CellExecutionError as err:
        return err
    return "".join(o.get("text", "") for c in nb.cells for o in c.outputs if o.output_type == "stream")


REPORT = "import os, labkit.dataset; print('labkit from', labkit.dataset.__file__); print('cwd', os.getcwd())"


def test_first_notebook_clones_later_ones_reuse_the_clone_with_the_students_edits(tmp_path):
    stand_in = make_stand_in_colab(tmp_path / "stand_in")
    origin = make_origin(tmp_path / "origin")
    drive = tmp_path / "drive"
    workbook = (drive / "MyDrive" / "metric-lab").resolve()

    out = run_setup(NOTEBOOKS[0], drive, origin, stand_in, REPORT)
    assert isinstance(out, str), out
    assert (workbook / "labkit" / "dataset.py").exists() and (workbook / ".git").is_dir()
    assert f"labkit from {workbook / 'labkit' / 'dataset.py'}" in out
    assert f"cwd {workbook / 'notebooks'}" in out
    assert "your workbook:" in out and ("GPU:" in out or "no GPU in this runtime" in out)
    assert (drive / "mounts.log").read_text().splitlines() == [str(drive)]

    # the student writes code in the clone; every later notebook (a fresh runtime) sees it
    with open(workbook / "labkit" / "dataset.py", "a") as f:
        f.write("\nSTUDENT_EDIT = 'written in notebook 01'\n")
    for notebook in NOTEBOOKS[1:]:
        out = run_setup(notebook, drive, origin, stand_in, "import labkit.dataset; print(labkit.dataset.STUDENT_EDIT)")
        assert isinstance(out, str), f"{notebook.name}: {out}"
        assert "written in notebook 01" in out, notebook.name
    assert "STUDENT_EDIT" not in (origin / "labkit" / "dataset.py").read_text()  # never pulled over
    assert len((drive / "mounts.log").read_text().splitlines()) == len(NOTEBOOKS)


def test_a_failed_clone_stops_with_what_to_do(tmp_path):
    stand_in = make_stand_in_colab(tmp_path / "stand_in")
    drive = tmp_path / "drive"
    err = run_setup(NOTEBOOKS[0], drive, tmp_path / "no-such-repository", stand_in, "print('went on')")
    assert isinstance(err, CellExecutionError)
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # without the traceback's colours
    assert "RuntimeError: could not clone" in message and "no-such-repository" in message
    assert "Check the address" in message
    assert "ModuleNotFoundError" not in message  # it stops before anything tries to import labkit
    assert not (drive / "MyDrive" / "metric-lab").exists()


def test_setup_refuses_a_labkit_imported_from_elsewhere(tmp_path):
    from labkit import colab

    with pytest.raises(RuntimeError, match="Restart session"):
        colab.check_imported_from(tmp_path)
    colab.check_imported_from(Path(colab.__file__).parent.parent)  # the folder it came from: fine


def test_gpu_line_names_the_device_or_says_how_to_get_one():
    import torch

    from labkit.colab import gpu_line

    line = gpu_line()
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in line
    else:
        assert "Change runtime type" in line


def test_install_runs_pip_once_per_runtime_and_reports_its_failure(tmp_path, monkeypatch):
    import subprocess as sp

    from labkit import colab

    workbook = Path(colab.__file__).resolve().parent.parent
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return sp.CompletedProcess(cmd, 1 if len(calls) > 1 else 0, "", "ERROR: no setup.py or pyproject.toml")

    monkeypatch.setattr(colab.subprocess, "run", fake_run)
    monkeypatch.setattr(colab.os, "chdir", lambda path: None)
    monkeypatch.setattr(colab, "_installed", set())
    monkeypatch.delenv(colab.INSTALL_ENV, raising=False)
    monkeypatch.setenv("LABKIT_DATA_ROOT", "restored after the test")
    monkeypatch.delenv("LABKIT_DATA_ROOT")
    colab.setup(workbook)
    assert os.environ["LABKIT_DATA_ROOT"] == colab.DATA_ROOT  # MNIST on the runtime's disk, not in Drive
    colab.setup(workbook)  # a rerun of the cell
    assert len(calls) == 1 and calls[0][-2:] == ["-e", str(workbook)]
    with pytest.raises(RuntimeError, match="(?s)pip could not install labkit.*no setup.py"):
        colab.install_editable(tmp_path)
