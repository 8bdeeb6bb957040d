"""Run the whole lab headless: execute the notebooks into an output folder, print the results table.

    python scripts/run_lab.py [--out out] [--source auto|mnist|sample] [--refresh]

Executed notebooks go to ``<out>/notebooks``, figures to ``<out>/figures``, checkpoints to
``<out>/checkpoints`` and the results to ``<out>/results.json``. ``--refresh`` instead writes the
executed notebooks back over ``notebooks/`` (sample data, no progress bars): the stored outputs
that nbval compares against.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
sys.path.insert(0, str(REPO))

from labkit import outputs  # noqa: E402  (after the path set-up, so a plain checkout works)

COLUMNS = [("task", "task"), ("what", "what"), ("accuracy", "test accuracy", "{:.2%}"), ("source", "data"),
           ("epochs", "epochs"), ("device", "device")]


def execute(path, out_path, timeout):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in nb.cells:  # execution timestamps would make every re-run a diff
        cell.metadata.pop("execution", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--source", choices=("auto", "mnist", "sample"), default=None,
                        help="data source for every notebook (default: $LABKIT_DATA or auto)")
    parser.add_argument("--refresh", action="store_true", help="rewrite the stored outputs in notebooks/")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    args = parser.parse_args()

    out = args.out.resolve()
    if args.refresh:
        args.source = "sample"
        os.environ["LABKIT_DEVICE"] = "cpu"
    os.environ.setdefault("LABKIT_DATA_ROOT", os.path.relpath(REPO / "data", NOTEBOOKS))
    # relative to the notebooks' folder (the kernels' working directory): no machine paths in outputs
    os.environ.update(LABKIT_OUTPUT=os.path.relpath(out, NOTEBOOKS),
                      LABKIT_CHECKPOINTS=os.path.relpath(out / "checkpoints", NOTEBOOKS), LABKIT_PROGRESS="0",
                      MPLBACKEND="module://matplotlib_inline.backend_inline")
    if args.source:
        os.environ["LABKIT_DATA"] = args.source
    previous = out / outputs.RESULTS_FILE
    if previous.exists():  # this run starts a fresh results file; the last one is kept beside it
        previous.replace(out / f"previous-{outputs.RESULTS_FILE}")

    paths = [NOTEBOOKS / n for n in args.notebooks] if args.notebooks else sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        target = path if args.refresh else out / "notebooks" / path.name
        print(f"running {path.name} ...", flush=True)
        execute(path, target, args.timeout)
        print(f"  done in {time.perf_counter() - t0:.0f} s -> {os.path.relpath(target)}", flush=True)
    wall = time.perf_counter() - start

    results = outputs.load_results(out)
    outputs.record_result("run", out, wall_time_s=round(wall, 1), notebooks=[p.name for p in paths])
    rows = [dict(task=k, **v) for k, v in sorted(results.items()) if k != "run"]
    print()
    if rows:
        print(outputs.format_table(rows, COLUMNS))
    print(f"\nwall time: {wall:.0f} s; outputs in {os.path.relpath(out)}/ (results.json, figures/, notebooks/)")


if __name__ == "__main__":
    main()
