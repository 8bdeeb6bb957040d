"""Command line of the autograder.

    python -m labkit.grade SUBMISSION... --out grades/ [--jobs N] [--timeout S] [--memory MB]
                           [--hidden DIR] [--reference DIR]
    python -m labkit.grade --self          # this checkout graded against itself (a student's check)

See README.md, "For instructors", for what is taken from a submission and what the files hold.
"""
import argparse
import sys
from pathlib import Path

from labkit.grading import Limits, grade

CHECKOUT = Path(__file__).resolve().parent.parent  # the workbook this labkit was imported from


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labkit.grade", description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="*", type=Path, help="workbook folders, .zip files, or folders of them")
    parser.add_argument("--self", dest="self_check", action="store_true",
                        help="grade this checkout against itself (no hidden tests)")
    parser.add_argument("--out", type=Path, help="where grades.csv, answers.csv and feedback/ go")
    parser.add_argument("--jobs", type=int, default=1, help="task runs in parallel (default 1)")
    parser.add_argument("--timeout", type=float, default=Limits.timeout, help="seconds per task run")
    parser.add_argument("--memory", type=int, default=Limits.memory_mb, help="MB of address space per process; 0: none")
    parser.add_argument("--epochs", type=int, default=Limits.epochs,
                        help="training epochs in notebooks 03 and 04 (default: theirs on the bundled sample)")
    parser.add_argument("--hidden", type=Path, help="instructor-only task tests (default: tests/hidden if it exists)")
    parser.add_argument("--reference", type=Path, default=CHECKOUT, help="the reference checkout (default: this one)")
    args = parser.parse_args(argv)
    if args.self_check == bool(args.submissions):
        parser.error("give submissions to grade, or --self to check this checkout (not both)")
    if args.jobs < 1 or args.timeout <= 0 or args.memory < 0 or (args.epochs is not None and args.epochs < 1):
        parser.error("--jobs and --epochs must be at least 1, --timeout positive, --memory 0 or more")
    if not (args.reference / "labkit").is_dir() or not (args.reference / "notebooks").is_dir():
        parser.error(f"--reference {args.reference} is not a workbook checkout (no labkit/ and notebooks/)")
    if args.hidden is None and not args.self_check and (args.reference / "tests" / "hidden").is_dir():
        args.hidden = args.reference / "tests" / "hidden"
    if args.hidden is not None and not args.hidden.is_dir():
        parser.error(f"--hidden {args.hidden} is not a folder")
    if args.out is None:
        if not args.self_check:
            parser.error("--out is required: the folder for grades.csv, answers.csv and feedback/")
        args.out = args.reference / "build" / "self-check"
    return args


def main(argv=None):
    args = parse_args(argv)
    limits = Limits(timeout=args.timeout, memory_mb=args.memory, epochs=args.epochs)
    paths = [args.reference] if args.self_check else args.submissions
    try:
        rows, maxima = grade(paths, args.out, args.reference, hidden=None if args.self_check else args.hidden,
                             limits=limits, jobs=args.jobs)
    except (OSError, ValueError) as err:
        sys.exit(f"labkit.grade: {err}")
    if args.self_check:
        print((args.out / "feedback" / f"{rows[0]['student']}.md").read_text(encoding="utf-8"))
    print(f"\ngrades: {args.out / 'grades.csv'}, feedback: {args.out / 'feedback'}, answers: {args.out / 'answers.csv'}")


if __name__ == "__main__":
    main()
