"""Fault injection, the main command (scripts/run_lab.py) and the results file.

Each case is one a careless or unlucky user met (issue 10). The notebooks run here are tiny stand-ins
(one cell each, a kernel start of about a second), never the lab's own.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from labkit import outputs
from tests.helpers import FullDisk

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "run_lab.py"


def stand_in_notebooks(folder, cells=None):
    """Numbered one-cell notebooks; by default each records one result as the lab's do."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = cells or {"01_first.ipynb": "record_result('1a', what='first', accuracy=0.5)",
                      "02_second.ipynb": "record_result('2a', what='second', accuracy=0.25)"}
    for name, code in cells.items():
        source = f"from labkit.outputs import record_result\n{code}"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), folder / name)
    return folder


def run_lab(notebooks, *args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, str(SCRIPT), "--notebook-dir", str(notebooks), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def load_script():
    spec = importlib.util.spec_from_file_location("run_lab_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restored_environment(monkeypatch):
    """run_lab sets variables for its kernels in its own environment: give them back after the test."""
    for name in ("LABKIT_OUTPUT", "LABKIT_CHECKPOINTS", "LABKIT_PROGRESS", "LABKIT_DATA", "LABKIT_DATA_ROOT",
                 "LABKIT_DEVICE", "MPLBACKEND", "PYDEVD_DISABLE_FILE_VALIDATION"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture
def main(restored_environment, capsys):
    """run_lab's main() in this process (no interpreter start): returns (exit status, stdout, stderr)."""
    script = load_script()

    def call(notebooks, *args):
        status = script.main(["--notebook-dir", str(notebooks), *map(str, args)])
        out, err = capsys.readouterr()
        return status, out, err

    return call


# the output folder


def test_an_unrelated_non_empty_folder_is_refused_and_left_alone(tmp_path, main):
    mine = tmp_path / "my-work"
    mine.mkdir()
    files = {"previous-results.json": "{\"mine\": 1}\n", "results.json": "{\"also mine\": 2}\n",
             "notebooks/01_first.ipynb": "my own notebook"}
    for name, text in files.items():
        (mine / name).parent.mkdir(exist_ok=True)
        (mine / name).write_text(text)
    status, out, err = main(stand_in_notebooks(tmp_path / "nb"), "--out", mine)
    assert status == 2 and out == ""
    assert "is not empty and was not made by run_lab.py" in err and len(err.splitlines()) == 1
    assert {n: (mine / n).read_text() for n in files} == files and sorted(os.listdir(mine)) == sorted(
        ["previous-results.json", "results.json", "notebooks"])


@pytest.mark.parametrize("out", [".", "notebooks", "notebooks/new", "labkit/x", ".."])
def test_the_repository_is_never_an_output_folder(tmp_path, monkeypatch, main, out):
    before = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    monkeypatch.chdir(REPO)
    status, _, err = main(stand_in_notebooks(tmp_path / "nb"), "--out", out)
    assert status == 2 and "repository" in err
    after = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert after == before


def test_an_empty_folder_is_accepted_and_the_output_is_quiet(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = run_lab(stand_in_notebooks(tmp_path / "nb"), "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no kernel transport warning, no debugger note, nothing
    lines = [line for line in result.stdout.splitlines() if line]  # a line per notebook, the table, the time
    assert [line.split()[:2] for line in lines[:2]] == [["01_first.ipynb", "ok"], ["02_second.ipynb", "ok"]]
    assert lines[2].split() == ["task", "what", "test", "accuracy", "data", "epochs", "device"]
    assert lines[4].split()[:3] == ["1a", "first", "50.00%"] and lines[5].split()[:3] == ["2a", "second", "25.00%"]
    assert len(lines) == 7 and lines[6].startswith("wall time:")
    assert (out / ".labkit-run").exists()
    assert nbformat.read(out / "notebooks" / "01_first.ipynb", as_version=4).cells[0].execution_count == 1


# results of partial runs are merged, never dropped


def test_what_a_kernel_prints_to_its_own_stderr_is_shown_only_when_its_notebook_fails(tmp_path):
    """A kernel that ran its notebook fine can still write to its stderr (libzmq at shutdown once did,
    on CI): that is not the student's problem. When the notebook fails, it may be the clue."""
    noise = "import os\nos.write(2, b'kernel noise on fd 2\\n')"
    quiet = run_lab(stand_in_notebooks(tmp_path / "ok", {"01_noisy.ipynb": noise}), "--out", tmp_path / "out1")
    assert quiet.returncode == 0 and quiet.stderr == ""
    failing = run_lab(stand_in_notebooks(tmp_path / "bad", {"01_noisy.ipynb": noise + "\nraise RuntimeError('boom')"}),
                      "--out", tmp_path / "out2")
    assert failing.returncode == 1
    assert "RuntimeError" in failing.stderr and "the kernel's own stderr:\nkernel noise on fd 2" in failing.stderr


def test_partial_runs_keep_every_result(tmp_path, main):
    nb = stand_in_notebooks(tmp_path / "nb")
    out = tmp_path / "out"
    assert main(nb, "--out", out)[0] == 0  # then twice more into its own (marked, not empty) folder
    assert main(nb, "--out", out, "01_first")[0] == 0
    assert main(nb, "--out", out, "02_second.ipynb")[0] == 0
    results = json.loads((out / "results.json").read_text())
    previous = json.loads((out / "previous-results.json").read_text())
    assert {"1a", "2a", "run"} <= set(results) and {"1a", "2a", "run"} <= set(previous)
    assert results["run"]["notebooks"] == ["02_second.ipynb"] and previous["run"]["notebooks"] == ["01_first.ipynb"]


# atomic writes


def test_a_full_disk_leaves_the_stored_notebook_intact(tmp_path, monkeypatch, main):
    nb = stand_in_notebooks(tmp_path / "nb", {"01_first.ipynb": "print('refreshed')"})
    stored = (nb / "01_first.ipynb").read_bytes()
    monkeypatch.setattr(outputs, "_open_fd", lambda fd: FullDisk(fd, written=100))  # 100 bytes, then full
    with pytest.raises(OSError, match=r"the disk is full.*01_first\.ipynb could not be written and is unchanged"):
        main(nb, "--refresh", "--out", tmp_path / "out")
    assert (nb / "01_first.ipynb").read_bytes() == stored
    assert os.listdir(nb) == ["01_first.ipynb"]  # no temporary file left


def test_a_failing_notebook_is_reported_and_never_replaces_the_stored_one(tmp_path, main):
    nb = stand_in_notebooks(tmp_path / "nb", {"01_broken.ipynb": "1 / 0"})
    stored = (nb / "01_broken.ipynb").read_bytes()
    status, out, err = main(nb, "--refresh", "--out", tmp_path / "out")
    assert status == 1 and "ZeroDivisionError" in err and out.split() == ["01_broken.ipynb", "FAILED"]
    assert err.splitlines()[-1] == "run_lab.py: 01_broken.ipynb failed"
    assert (nb / "01_broken.ipynb").read_bytes() == stored


# several processes recording results at once


def test_results_recorded_by_several_processes_at_once_are_all_kept(tmp_path):
    code = ("import sys\nfrom labkit.outputs import record_result\n"
            "for i in range(20):\n    record_result(f'{sys.argv[1]}-{i}', sys.argv[2], accuracy=i / 20)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writers = [subprocess.Popen([sys.executable, "-c", code, f"p{p}", str(tmp_path)], env=env) for p in range(6)]
    assert all(w.wait(timeout=60) == 0 for w in writers)
    results = outputs.load_results(tmp_path)
    assert len(results) == 120 and results["p3-19"] == {"accuracy": 0.95}


# interrupts, names, timeouts


def test_ctrl_c_is_reported_as_an_interrupt(tmp_path):
    nb = stand_in_notebooks(tmp_path / "nb", {"01_quick.ipynb": "record_result('q', what='quick')",
                                             "02_slow.ipynb": "import time\ntime.sleep(60)"})
    process = run_lab(nb, "--out", tmp_path / "out", wait=False)
    line = process.stdout.readline()
    assert line.startswith("01_quick.ipynb") and " ok " in line
    time.sleep(1.5)  # the slow notebook's kernel is starting or running its cell
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.strip().splitlines() == ["run_lab.py: interrupted (Ctrl-C); the notebooks that finished before it "
                                        "are written and their results kept"]
    assert "q" in json.loads((tmp_path / "out" / "results.json").read_text())


def test_unknown_notebook_name_lists_the_notebooks(tmp_path, main):
    status, _, err = main(stand_in_notebooks(tmp_path / "nb"), "--out", tmp_path / "out", "03_training")
    assert status == 2
    assert err.strip() == "run_lab.py: error: no notebook '03_training'; choose from 01_first.ipynb, 02_second.ipynb"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(tmp_path, main, capsys, timeout):
    with pytest.raises(SystemExit) as info:  # argparse's own exit, status 2
        main(stand_in_notebooks(tmp_path / "nb"), "--out", tmp_path / "out", "--timeout", timeout)
    assert info.value.code == 2 and "is not a positive number of seconds per cell" in capsys.readouterr().err
