"""Make the student edition: the repository with every reference solution cut out.

    python scripts/make_student.py [--out student]

Each block between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` in labkit/ becomes, at the same
indentation, ``raise NotImplementedError("<task>: write this part in <module>")``. Everything else
(notebooks with their stored ✔ outputs, tests, README, Makefile) is copied as it is, so grading a
submission is ``make test`` (nbval compares the check cells) in the student's copy.
"""
import argparse
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
TASKS = {"dataset.py": "Task 1", "model.py": "Task 2", "classify.py": "Task 3"}
COPY = ["labkit", "notebooks", "tests", "scripts", "README.md", "Makefile", "pyproject.toml",
        "environment.yml", "conftest.py", ".ci", ".gitignore"]


def strip_solutions(text, label):
    """Replace each solution block of ``text``; returns (new text, number of blocks)."""
    out, inside, blocks = [], False, 0
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        begin = BEGIN.match(line)
        if begin and not inside:
            inside, blocks = True, blocks + 1
            out.append(f'{begin.group(1)}raise NotImplementedError("{label}")  # YOUR CODE HERE\n')
        elif END.match(line):
            if not inside:
                raise ValueError(f"{label}: END SOLUTION without BEGIN at line {number}")
            inside = False
        elif begin:
            raise ValueError(f"{label}: nested BEGIN SOLUTION at line {number}")
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{label}: BEGIN SOLUTION without END")
    return "".join(out), blocks


def make_student(out):
    out = Path(out)
    if out.resolve() == REPO:
        raise ValueError("the student edition must go to another folder than the repository")
    shutil.rmtree(out, ignore_errors=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        elif src.exists():
            shutil.copy2(src, out / name)
    counts = {}
    for module in sorted((out / "labkit").glob("*.py")):
        task = TASKS.get(module.name, "task")
        text, blocks = strip_solutions(module.read_text(), f"{task}: write this part in labkit/{module.name}")
        if blocks:
            module.write_text(text)
            counts[module.name] = blocks
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "student")
    args = parser.parse_args()
    counts = make_student(args.out)
    print(f"student edition in {args.out}: " + ", ".join(f"{m} ({n} blocks)" for m, n in counts.items()))


if __name__ == "__main__":
    main()
