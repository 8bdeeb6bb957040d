"""Run the whole lab headless: execute the notebooks into an output folder, print the results table.

    python scripts/run_lab.py [--out out] [--source auto|mnist|fashion|sample] [--timeout S] [--refresh] [NOTEBOOK ...]

Executed notebooks go to ``<out>/notebooks``, figures to ``<out>/figures``, checkpoints to
``<out>/checkpoints`` and the results to ``<out>/results.json``. ``--refresh`` instead writes the
executed notebooks back over ``notebooks/`` (sample data, no progress bars): the stored outputs
that nbval compares against. It is the only way this script writes into the repository.

The output folder is marked as this script's own (a ``.labkit-run`` file in it): a folder that is
not empty and not marked is refused. ``results.json`` keeps every entry: a run of some notebooks
replaces only theirs; ``previous-results.json`` is the file as it was before the last run. Files
are written whole or not at all. Ctrl-C stops the run (exit status 130).
"""
import argparse
import atexit
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from traitlets.config import Config

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
MARKER = ".labkit-run"
SCRATCH = ("out", "build")  # the repository's ignored scratch folders (when git cannot tell)
sys.path.insert(0, str(REPO))

from labkit import outputs  # noqa: E402  (after the path set-up, so a plain checkout works)

COLUMNS = [("task", "task"), ("what", "what"), ("accuracy", "test accuracy", "{:.2%}"), ("source", "data"),
           ("epochs", "epochs"), ("device", "device")]


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


def execute(path, out_path, timeout, workdir):
    """Run the notebook in a fresh kernel (working directory: its folder), write it atomically."""
    nb = nbformat.read(path, as_version=4)
    # IPC sockets in a private folder instead of TCP on localhost: nothing listens on the network,
    # and the kernel has no reason for its "running over TCP without encryption" warning
    config = Config(KernelManager={"transport": "ipc", "ip": str(workdir / "kernel")}) if os.name == "posix" else None
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=config,
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    # the kernel's own stderr goes to a log, shown only when the notebook fails: a healthy kernel can
    # still print there at shutdown (libzmq's "Assertion failed: pfd.revents & POLLIN" was seen once
    # on this project's CI after a notebook that had run fine)
    log_path = workdir / f"{path.stem}.kernel-stderr.log"
    with open(log_path, "wb") as log:
        try:
            _execute_in_thread(client, stderr=log)
        except (CellExecutionError, CellTimeoutError) as exc:
            error = exc
    if error is not None:
        error.kernel_stderr = log_path.read_text(errors="replace").strip()[-3000:]
    for cell in nb.cells:  # execution timestamps would make every re-run a diff
        cell.metadata.pop("execution", None)
    # widget state (50-300 kB per notebook, a PNG included) is only for a live kernel; nbclient's
    # store_widget_state=False breaks its output widgets, so drop the state after the run instead
    nb.metadata.pop("widgets", None)
    if error is None or out_path.parent != path.parent:  # a failed run never replaces a stored notebook
        text = nbformat.writes(nb)
        outputs.atomic_write(out_path, lambda f: f.write(text.encode() + (b"" if text.endswith("\n") else b"\n")))
    if error is not None:
        raise error


def _execute_in_thread(client, **kernel_options):
    """``client.execute(**kernel_options)`` in a daemon thread, so that Ctrl-C reaches this script as
    KeyboardInterrupt (in the main thread nbclient takes SIGINT over, and an interrupt ends in
    DeadKernelError)."""
    failure = []

    def target():
        try:
            client.execute(**kernel_options)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
            failure.append(exc)

    thread = threading.Thread(target=target, name="labkit-notebook", daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        # the worker thread's event loop may still run a ZMQ callback on the dying kernel's sockets and
        # log its traceback (seen once, in a full test run on a busy 2-core machine): this process is ending
        logging.disable(logging.CRITICAL)
        process = getattr(getattr(client.km, "provisioner", None), "process", None)
        if process is not None:  # the kernel runs in its own session: Ctrl-C did not reach it
            process.kill()
        # nbclient's exit hook would clean up the killed kernel through the worker thread's event
        # loop and print a traceback after our one-line message
        atexit.unregister(client._cleanup_kernel)
        raise
    if failure:
        raise failure[0]


def check_out(out):
    """Refuse output folders in the repository itself or that hold files not made by this script."""
    if out == REPO or out in REPO.parents:
        raise UsageError(f"--out {out} holds the repository: its notebooks would be overwritten. "
                         f"Choose a new folder such as out/ (--refresh is the way to update notebooks/)")
    if REPO in out.parents and _part_of_repository(REPO / out.relative_to(REPO).parts[0]):
        raise UsageError(f"--out {os.path.relpath(out)} is inside the repository's own files; choose a new "
                         f"folder such as out/ (--refresh is the way to update notebooks/)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UsageError(f"--out {out} is not empty and was not made by run_lab.py (it has no {MARKER}); "
                         f"choose a new or empty folder, or move this one away yourself")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/run_lab.py: it may replace files here\n")


def _part_of_repository(path):
    try:
        tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--", str(path)],
                                 capture_output=True, text=True, timeout=30)
        if tracked.returncode == 0:
            return bool(tracked.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return path.exists() and path.name not in SCRATCH  # no git (a student's zip): all but scratch folders


def pick_notebooks(folder, names):
    available = sorted(p.name for p in folder.glob("[0-9]*.ipynb"))
    if not available:
        raise UsageError(f"no notebooks (NN_name.ipynb) in {folder}")
    chosen = []
    for name in names or available:
        matches = [a for a in available if a in (name, f"{name}.ipynb")]
        if not matches:
            raise UsageError(f"no notebook {name!r}; choose from {', '.join(available)}")
        chosen.append(folder / matches[0])
    return chosen


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds per cell")
    return value


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--source", choices=("auto", "mnist", "fashion", "sample"), default=None,
                        help="data source for every notebook (default: $LABKIT_DATA or auto)")
    parser.add_argument("--refresh", action="store_true", help="rewrite the stored outputs in notebooks/")
    parser.add_argument("--timeout", type=positive_seconds, default=3600, help="seconds per cell (default 3600)")
    parser.add_argument("--notebook-dir", type=Path, default=NOTEBOOKS, help=argparse.SUPPRESS)  # tests
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    return parser.parse_args(argv)


def run(args):
    out, folder = args.out.resolve(), args.notebook_dir.resolve()
    paths = pick_notebooks(folder, args.notebooks)
    check_out(out)
    if args.refresh:
        args.source = "sample"
        os.environ["LABKIT_DEVICE"] = "cpu"
    os.environ.setdefault("LABKIT_DATA_ROOT", os.path.relpath(REPO / "data", folder))
    # relative to the notebooks' folder (the kernels' working directory): no machine paths in outputs
    os.environ.update(LABKIT_OUTPUT=os.path.relpath(out, folder),
                      LABKIT_CHECKPOINTS=os.path.relpath(out / "checkpoints", folder), LABKIT_PROGRESS="0",
                      MPLBACKEND="module://matplotlib_inline.backend_inline",
                      PYDEVD_DISABLE_FILE_VALIDATION="1")  # the kernel's debugger note on frozen modules
    if args.source:
        os.environ["LABKIT_DATA"] = args.source
    results = out / outputs.RESULTS_FILE
    with outputs.results_lock(out):  # results.json is kept and merged into; a copy of it as it was
        if results.exists():
            text = results.read_bytes()
            outputs.atomic_write(out / f"previous-{outputs.RESULTS_FILE}", lambda f: f.write(text))

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-kernels-") as workdir:
        for path in paths:
            t0 = time.perf_counter()
            target = path if args.refresh else out / "notebooks" / path.name
            print(f"{path.name:<36}", end=" ", flush=True)
            try:
                execute(path, target, args.timeout, Path(workdir))
            except (CellExecutionError, CellTimeoutError) as exc:
                print("FAILED", flush=True)
                print(exc, file=sys.stderr)
                if getattr(exc, "kernel_stderr", ""):
                    print(f"the kernel's own stderr:\n{exc.kernel_stderr}", file=sys.stderr)
                kept = "" if args.refresh else f"; the executed notebook is {os.path.relpath(target)}"
                print(f"run_lab.py: {path.name} failed{kept}", file=sys.stderr)
                return 1
            print(f"ok  {time.perf_counter() - t0:5.0f} s", flush=True)
    wall = time.perf_counter() - start

    merged = outputs.record_result("run", out, wall_time_s=round(wall, 1), notebooks=[p.name for p in paths])
    rows = [dict(task=k, **v) for k, v in sorted(merged.items()) if k != "run"]
    if rows:
        print(f"\n{outputs.format_table(rows, COLUMNS)}")
    print(f"\nwall time: {wall:.0f} s; outputs in {os.path.relpath(out)}/ (results.json, figures/, notebooks/)")
    return 0


def main(argv=None):
    try:
        return run(parse(argv))
    except UsageError as exc:
        print(f"run_lab.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrun_lab.py: interrupted (Ctrl-C); the notebooks that finished before it are written and "
              "their results kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
