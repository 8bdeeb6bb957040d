"""Make the student edition: the repository with every reference solution cut out.

    python scripts/make_student.py [--out student]

In labkit/, the code between each ``# BEGIN SOLUTION`` and ``# END SOLUTION`` line becomes
``raise NotImplementedError("<task>: write this part in <module>")``; the marker lines stay, so the
students see where their code goes. Everything else (notebooks with their stored ✔ outputs, tests,
README, Makefile) is copied as it is, except the tests about the reference solution itself, so
grading a submission is ``make test`` (nbval compares the check cells) in the student's copy.
``--out`` must be a new or empty folder, or an earlier student edition (it is then replaced).
"""
import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
TASKS = {"dataset.py": "Task 1", "model.py": "Task 2", "classify.py": "Task 3", "viz.py": "Task 4"}
COPY = ["labkit", "notebooks", "tests", "scripts", "README.md", "Makefile", "pyproject.toml",
        "environment.yml", "conftest.py", ".ci", ".gitignore"]
INSTRUCTOR_ONLY = ["tests/test_student_edition.py", "scripts/make_student.py"]
MARKER = ".student-edition"  # written into every edition: only such a folder may be replaced


def strip_solutions(text, label):
    """Replace each solution block of ``text``; returns (new text, number of blocks)."""
    out, inside, blocks = [], False, 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        begin = BEGIN.match(line)
        if begin and not inside:
            inside, blocks = True, blocks + 1
            out.append(line)
            out.append(f'{begin.group(1)}raise NotImplementedError("{label}")  # YOUR CODE HERE\n')
        elif END.match(line):
            if not inside:
                raise ValueError(f"{label}: END SOLUTION without BEGIN at line {number}")
            inside = False
            out.append(line)
        elif begin:
            raise ValueError(f"{label}: nested BEGIN SOLUTION at line {number}")
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{label}: BEGIN SOLUTION without END")
    return "".join(out), blocks


def check_target(out):
    """Refuse any folder whose removal could lose work: the repository, its parents, its contents,
    or a non-empty folder that is not an earlier student edition."""
    target = Path(out).resolve()
    if target == REPO or target in REPO.parents:
        raise ValueError(f"{out} holds the repository itself; choose a new folder for the student edition")
    if any(target == REPO / name or (REPO / name) in target.parents for name in COPY):
        raise ValueError(f"{out} is inside the repository's own {target.relative_to(REPO).parts[0]}; choose another")
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise ValueError(f"{out} exists and is not an earlier student edition (no {MARKER} file); "
                         f"choose a new or empty folder")
    return target


def make_student(out):
    if (REPO / MARKER).exists():
        raise ValueError(f"{REPO} is itself a student edition: make editions from the reference repository")
    out = check_target(out)
    if out.exists():
        shutil.rmtree(out)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        elif src.exists():
            shutil.copy2(src, out / name)
    for name in INSTRUCTOR_ONLY:
        (out / name).unlink(missing_ok=True)
    (out / MARKER).write_text("made by scripts/make_student.py; this folder is replaced by the next run\n")
    counts = {}
    for module in sorted((out / "labkit").glob("*.py")):
        task = TASKS.get(module.name, "task")
        text, blocks = strip_solutions(module.read_text(), f"{task}: write this part in labkit/{module.name}")
        if blocks:
            module.write_text(text)
            counts[module.name] = blocks
    if not counts:
        raise ValueError("no solution blocks found in labkit/")
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "student")
    args = parser.parse_args()
    try:
        counts = make_student(args.out)
    except ValueError as err:
        sys.exit(f"make_student: {err}")
    print(f"student edition in {args.out}: " + ", ".join(f"{m} ({n} blocks)" for m, n in counts.items()))


if __name__ == "__main__":
    main()
