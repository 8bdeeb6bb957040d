"""How long grading takes: one submission alone, and a class of N with --jobs J, in one run.

    python benchmarks/bench_grading.py [--students 30] [--variants 30] [--jobs 2] [--epochs 2]

Submissions are made from this checkout's reference modules. ``--variants K`` makes K distinct
versions (a comment with the variant number in every student module) and hands them out in turn to
the N students: K = N means no two submissions share a task run (the cache never hits); K < N shows
what the cache saves when students' code coincides. Prints the CPU, whether bf16 ran (grading runs
use the CPU with the lab's default fast path), the load before and after, and the seconds.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit.device import cpu_name  # noqa: E402
from labkit.grading import Limits, grade  # noqa: E402
from labkit.grading.course import student_modules  # noqa: E402




def bf16_state():
    import torch

    from labkit.device import bf16_fast
    try:
        return f"bf16 {'on' if bf16_fast(torch.device('cpu')) else 'off'} (labkit.device.bf16_fast)"
    except Exception as err:  # the device helper's API may change: say so instead of guessing
        return f"bf16 state unknown ({type(err).__name__})"


def make_class(folder, students, variants):
    modules = student_modules(REPO)
    for s in range(students):
        sub = folder / f"student{s:02d}"
        shutil.copytree(REPO / "labkit", sub / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "notebooks", sub / "notebooks")
        for rel in modules.values():
            path = sub / rel
            path.write_text(path.read_text(encoding="utf-8") + f"# variant {s % variants}\n", encoding="utf-8")


def timed(paths, out, limits, jobs):
    start = time.perf_counter()
    rows, _ = grade(paths, out, REPO, limits=limits, jobs=jobs, log=lambda text: None)
    seconds = time.perf_counter() - start
    assert all(r["total"] == 100 for r in rows), [(r["student"], r["total"], r["status"]) for r in rows]
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--variants", type=int, help="distinct submissions (default: --students, all distinct)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=Limits.epochs)
    args = parser.parse_args()
    variants = min(args.variants or args.students, args.students)
    limits = Limits(epochs=args.epochs)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {bf16_state()}; grading threads per run: {limits.threads}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        make_class(tmp / "one", 1, 1)
        make_class(tmp / "class", args.students, variants)
        one = timed([tmp / "one"], tmp / "out-one", limits, jobs=1)  # also trains the checkpoints once
        shutil.copytree(tmp / "out-one" / ".cache", tmp / "out-class" / ".cache")  # as in a real run: once
        many = timed([tmp / "class"], tmp / "out-class", limits, jobs=args.jobs)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'what':<48} {'seconds':>8}")
    print(f"{'one submission, --jobs 1 (incl. checkpoints)':<48} {one:>8.0f}")
    print(f"{f'{args.students} submissions ({variants} distinct), --jobs {args.jobs}':<48} {many:>8.0f}")
    print(f"{'  per submission':<48} {many / args.students:>8.1f}")


if __name__ == "__main__":
    main()
