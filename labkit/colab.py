"""Google Colab: work in the student's own copy of the workbook in Google Drive.

Every notebook's setup cell starts with the same short bootstrap (the part that must run before
labkit can be imported): it mounts Google Drive, clones the workbook to ``MyDrive/metric-lab`` if it
is not there yet (a failed clone stops with what to do), puts that folder first on ``sys.path`` and
calls :func:`setup`. Because every notebook, and every fresh runtime, works from the same folder in
Drive, the code written for Task 1 in notebook 01 is there in 02-04 and after a restart, and the
folder is what the student hands in.

Environment variables (for tests and unusual setups): ``LABKIT_DRIVE`` (where Drive is mounted,
default ``/content/drive``), ``LABKIT_REPO_URL`` (clone this instead of the cell's ``REPO_URL``),
``LABKIT_COLAB_INSTALL=0`` (skip the editable pip install; the folder is on ``sys.path`` anyway).
MNIST goes to the runtime's disk (``LABKIT_DATA_ROOT=/content/data`` unless set), not into Drive.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

INSTALL_ENV = "LABKIT_COLAB_INSTALL"
DATA_ROOT = "/content/data"  # MNIST on the runtime's own disk: fast, and not part of the hand-in
_installed = set()  # workbooks installed in this runtime: rerunning the cell does not reinstall


def setup(workbook):
    """Finish the bootstrap: install ``workbook`` editable, work in its notebooks/, name the GPU."""
    workbook = Path(workbook).resolve()
    check_imported_from(workbook)
    if workbook not in _installed and os.environ.get(INSTALL_ENV, "1").lower() not in ("0", "false", "no", "off"):
        install_editable(workbook)
        _installed.add(workbook)
    os.chdir(workbook / "notebooks")  # outputs/ and checkpoints/ land in Drive too
    os.environ.setdefault("LABKIT_DATA_ROOT", DATA_ROOT)
    print(f"[labkit] your workbook: {workbook}. Code in labkit/*.py, notebooks, outputs and checkpoints "
          "stay there across notebooks and runtimes; hand in that folder.")
    print("[labkit] open the notebooks from that folder (Drive: metric-lab/notebooks, Open with Google "
          "Colaboratory) so that your answers are saved in it as well.")
    print(gpu_line())


def check_imported_from(workbook):
    """Refuse a labkit imported earlier in this runtime from somewhere else than ``workbook``."""
    import labkit

    here = Path(labkit.__file__).resolve().parent.parent
    if here != Path(workbook).resolve():
        raise RuntimeError(f"this runtime already imported labkit from {here}, not from your workbook "
                           f"{workbook}. Runtime → Restart session, then rerun this cell.")


def install_editable(workbook):
    """``pip install -e workbook``; the dependency ranges are those Colab already satisfies, so
    nothing is upgraded. A failure raises with pip's last lines."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(workbook)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"pip could not install labkit from {workbook}:\n{tail}\n"
                           "Check that the folder holds the whole workbook (pyproject.toml, labkit/), then rerun.")


def gpu_line():
    """One line naming the GPU labkit will use, or saying how to get one."""
    if torch.cuda.is_available():
        return f"[labkit] GPU: {torch.cuda.get_device_name(0)}; labkit uses it automatically"
    return ("[labkit] no GPU in this runtime: training runs on the CPU (slower). For a GPU: Runtime → "
            "Change runtime type → T4 GPU, then rerun this cell (your files in Drive stay).")
