"""Make the student edition: the workbook without its reference solutions, checked, then moved into place.

    python scripts/make_student.py [--out student] [--repo-url https://github.com/OWNER/REPO]

The edition is built in a temporary folder next to ``--out``:

* in labkit/, the code between each ``# BEGIN SOLUTION`` and ``# END SOLUTION`` line becomes
  ``raise NotImplementedError("Task N: write this part in labkit/<module>")`` (the markers and the
  hints above them stay); written-answer cells become "YOUR ANSWER HERE";
* instructor-only files stay out (INSTRUCTOR_ONLY: this script, hidden and grader tests, benchmarks,
  tests of the reference itself); the README is the student's (scripts/edition/README.md), the
  Makefile loses its instructor targets, and .github/workflows/classroom.yml grades every push
  (GitHub Classroom, scripts/edition/classroom.yml);
* ``--repo-url`` points every notebook's Colab badge and ``REPO_URL`` line, and the README, at the
  repository the edition is published in.

Then it is checked: no line of a reference solution is left anywhere in it, every answer cell holds
the placeholder, and its own tests (run in a subprocess) fail only with the tasks'
``NotImplementedError``. Only a complete, checked edition is moved to ``--out`` (an earlier edition
there is replaced in the same step); a failure leaves the earlier edition, or nothing.
``--out`` must be a new or empty folder, or an earlier student edition.
"""
import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit.grading.course import TASKS as COURSE_TASKS  # noqa: E402  (after the path set-up)

TEMPLATES = REPO / "scripts" / "edition"
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
TASKS = {module: f"Task {task}" for module, task in COURSE_TASKS.items()}  # the grader's one mapping
COPY = ["labkit", "notebooks", "tests", "scripts", "Makefile", "pyproject.toml", "environment.yml",
        "conftest.py", ".gitignore"]
INSTRUCTOR_ONLY = [  # paths relative to the repository (fnmatch patterns); never in an edition
    "scripts/make_student.py", "scripts/make_sample.py", "scripts/classroom.py", "scripts/edition",
    "tests/test_student_edition.py", "tests/test_classroom.py", "tests/hidden", "tests/test_grad*.py",
    "tests/test_checks.py",  # its wrong implementations are near-solutions
    "tests/test_notebooks.py",  # nbval against the reference solution and its stored outputs
    "tests/test_benchmark.py", "benchmarks",
]
JUNK = ["__pycache__", ".ipynb_checkpoints", "*.egg-info", ".pytest_cache"]
NOTEBOOK_JUNK = ["data", "outputs", "checkpoints"]  # what running a notebook leaves next to it
MAKE_TARGETS_DROPPED = ("bench", "bench-recipes", "grade", "student")
ANSWER = "YOUR ANSWER HERE"  # nbgrader's placeholder
MARKER = ".student-edition"  # written last into every edition: only such a folder may be replaced
REFERENCE_URL = "https://github.com/metric-lab/metric-lab"
GITHUB_URL = re.compile(r"^https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/([A-Za-z0-9._-]{1,100}?)(?:\.git)?/?$")
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/main/notebooks/")
REPO_URL_LINE = re.compile(r'^(\s*REPO_URL = )"[^"]*"', re.M)


class EditionError(Exception):
    """The edition could not be made or failed its check; nothing at --out was changed."""


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


def _code(line):
    """A line as compared for leaks: without indentation and trailing comment."""
    return re.sub(r"\s+#.*$", "", line).strip()


def solution_lines(text):
    """The non-trivial lines inside the solution blocks of ``text`` (what must never reach students)."""
    lines, inside = set(), False
    for line in text.splitlines():
        if BEGIN.match(line) or END.match(line):
            inside = bool(BEGIN.match(line))
        elif inside:
            code = _code(line)
            if len(code) >= 10 and not code.startswith("#") and re.search(r"[=(\[.]", code):
                lines.add(code)
    return lines


def parse_repo_url(url):
    """(owner, name) of a https GitHub repository URL; a clear error for anything else."""
    match = GITHUB_URL.match(url or "")
    if not match or "@" in url:
        raise ValueError(f"--repo-url {url!r} is not a https GitHub repository URL; give it as "
                         f"https://github.com/OWNER/REPO (Colab opens notebooks from GitHub only; no "
                         f"ssh, http, credentials or paths below the repository)")
    return match.group(1), match.group(2)


def rewrite_urls(text, owner, name):
    """Point Colab badges, the ``REPO_URL = "..."`` line and other mentions of the reference repository
    at github.com/<owner>/<name>."""
    url = f"https://github.com/{owner}/{name}"
    text = BADGE.sub(f"https://colab.research.google.com/github/{owner}/{name}/blob/main/notebooks/", text)
    text = REPO_URL_LINE.sub(lambda m: f'{m.group(1)}"{url}"', text)
    return text.replace(REFERENCE_URL, url)


def task_points(notebooks):
    """{task: (points of its check cells, points of its written answers)} from the nbgrader metadata."""
    points = {}
    for path in sorted(Path(notebooks).glob("[0-9]*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            match = re.match(r"task(\d+)", meta.get("grade_id", ""))
            if meta.get("grade") and match:
                auto, manual = points.get(int(match.group(1)), (0, 0))
                solution = bool(meta.get("solution"))
                points[int(match.group(1))] = (auto + (0 if solution else meta.get("points", 0)),
                                               manual + (meta.get("points", 0) if solution else 0))
    return dict(sorted(points.items()))


def drop_make_targets(text, names):
    """The Makefile without the rules of ``names`` (target line and recipe) and without them in .PHONY."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        target = re.match(r"^([A-Za-z_-]+)\s*:", line)
        if target and not line.startswith("\t"):
            skipping = target.group(1) in names
        elif skipping and not line.startswith("\t"):
            skipping = False
        if line.startswith(".PHONY:"):
            line = " ".join(w for w in line.rstrip("\n").split(" ") if w not in names) + "\n"
        if not skipping:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "".join(out))  # no gaps where rules were


def student_readme(owner, name, points):
    """The edition's README from scripts/edition/README.md."""
    rows = "\n".join(f"| Task {t} | {auto} | {manual or '–'} |" for t, (auto, manual) in points.items())
    total = f"| **all** | **{sum(a for a, _ in points.values())}** | **{sum(m for _, m in points.values())}** |"
    values = {"REPO_URL": f"https://github.com/{owner}/{name}",
              "COLAB": f"https://colab.research.google.com/github/{owner}/{name}/blob/main/notebooks",
              "POINTS": "| task | checks (automatic) | written answers (by hand) |\n|---|---|---|\n" + rows + "\n" + total}
    text = (TEMPLATES / "README.md").read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise EditionError(f"scripts/edition/README.md has an unknown placeholder near {text[text.index('{{'):][:30]!r}")
    return text


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


def _ignored(src, names):
    rel = Path(src).resolve().relative_to(REPO)
    skip = {n for n in names if any(fnmatch.fnmatch(n, p) for p in JUNK)}
    skip |= {n for n in names if any(fnmatch.fnmatch((rel / n).as_posix(), p) for p in INSTRUCTOR_ONLY)}
    if rel.as_posix() == "notebooks":
        skip |= set(names) & set(NOTEBOOK_JUNK)
    return skip


def build(folder, owner, name):
    """Write the unchecked edition into the empty ``folder``; returns {module: number of blocks}."""
    for item in COPY:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, folder / item, ignore=_ignored)
        elif src.exists():
            shutil.copy2(src, folder / item)
    counts = {}
    for module in sorted((folder / "labkit").glob("*.py")):
        task = TASKS.get(module.name, "task")
        text, blocks = strip_solutions(module.read_text(encoding="utf-8"),
                                       f"{task}: write this part in labkit/{module.name}")
        if blocks:
            module.write_text(text, encoding="utf-8")
            counts[module.name] = blocks
    if not counts:
        raise EditionError("no solution blocks found in labkit/")
    for path in sorted((folder / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown" and cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                cell["source"] = ANSWER
            cell["source"] = rewrite_urls("".join(cell["source"]), owner, name).splitlines(keepends=True)
        path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    makefile = folder / "Makefile"
    makefile.write_text(drop_make_targets(makefile.read_text(encoding="utf-8"), MAKE_TARGETS_DROPPED), encoding="utf-8")
    (folder / "README.md").write_text(student_readme(owner, name, task_points(REPO / "notebooks")), encoding="utf-8")
    workflow = folder / ".github" / "workflows" / "classroom.yml"
    workflow.parent.mkdir(parents=True)
    shutil.copy2(TEMPLATES / "classroom.yml", workflow)
    return counts


def leaks(folder):
    """['path:line: code', ...] for every reference solution line found in the edition's text files."""
    secret = set()
    for module in (REPO / "labkit").glob("*.py"):
        secret |= solution_lines(module.read_text(encoding="utf-8"))
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".yml")):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":  # compare the cells' lines, not their JSON quoting
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        for number, line in enumerate(text.splitlines(), 1):
            if _code(line) in secret:
                found.append(f"{path.relative_to(folder)}:{number}: {_code(line)}")
    return found


def run_edition_tests(folder, timeout=1800):
    """Run the edition's tests (no notebooks) in a subprocess; {task label: failures}. Raises EditionError
    for a collection error or any failure that is not a task's NotImplementedError."""
    labels = [f"{task}: write this part in labkit/{module}" for module, task in TASKS.items()]
    with tempfile.TemporaryDirectory(prefix="edition-tests-") as scratch:
        report = Path(scratch) / "report.xml"
        env = dict(os.environ, PYTHONPATH=str(folder), PYTHONDONTWRITEBYTECODE="1", LABKIT_DATA="sample",
                   LABKIT_PROGRESS="0", LABKIT_DEVICE="cpu")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(folder),
             "-c", str(folder / "pyproject.toml"), f"--junitxml={report}", str(folder / "tests")],
            cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode not in (0, 1) or not report.exists():
            raise EditionError(f"the edition's tests did not run (pytest exit {result.returncode}):\n"
                               f"{(result.stdout + result.stderr)[-3000:]}")
        cases = ET.parse(report).getroot().iter("testcase")
    per_task, wrong = {label: 0 for label in labels}, []
    for case in cases:
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            text = (problem.get("message") or "") + "\n" + (problem.text or "")
            label = next((lb for lb in labels if lb in text), None)
            if label is None:
                wrong.append(f"{case.get('classname')}::{case.get('name')}: {(problem.get('message') or '')[:300]}")
            else:
                per_task[label] += 1
    if wrong:
        raise EditionError("the edition's tests fail for reasons other than the unwritten tasks:\n  " + "\n  ".join(wrong))
    return per_task


def verify(folder, owner, name, run_tests=True):
    """Check a built edition; raises EditionError naming every problem found."""
    problems = [f"reference solution line left in {leak}" for leak in leaks(folder)]
    for path in sorted((folder / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell.get("metadata", {}).get("nbgrader", {}).get("solution") and "".join(cell["source"]) != ANSWER:
                problems.append(f"{path.name}: answer cell {cell['metadata']['nbgrader'].get('grade_id')} is not {ANSWER!r}")
        text = "".join("".join(c["source"]) for c in cells)
        if f"colab.research.google.com/github/{owner}/{name}/blob/main/notebooks/{path.name}" not in text:
            problems.append(f"{path.name}: no Colab badge for github.com/{owner}/{name}")
        if (owner, name) != parse_repo_url(REFERENCE_URL) and "metric-lab/metric-lab" in text:
            problems.append(f"{path.name}: still names the reference repository")
    for pattern in INSTRUCTOR_ONLY:
        problems += [f"instructor-only file in the edition: {p.relative_to(folder)}" for p in folder.glob(pattern)]
    if problems:
        raise EditionError("the edition failed its check:\n  " + "\n  ".join(problems))
    return run_edition_tests(folder) if run_tests else {}


def install(built, out):
    """Move the checked edition ``built`` to ``out`` in one rename; an earlier edition goes only after."""
    if not out.exists():
        os.rename(built, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(built, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def make_student(out, repo_url=REFERENCE_URL, run_tests=True):
    """Build, check and install the edition at ``out``; returns (blocks per module, test failures per task)."""
    if (REPO / MARKER).exists():
        raise ValueError(f"{REPO} is itself a student edition: make editions from the reference repository")
    owner, name = parse_repo_url(repo_url)
    out = check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    building.chmod(0o755)  # mkdtemp makes it private; an edition is meant to be shared
    try:
        counts = build(building, owner, name)
        failures = verify(building, owner, name, run_tests)
        (building / MARKER).write_text("made by scripts/make_student.py; this folder is replaced by the next run\n")
        install(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return counts, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "student")
    parser.add_argument("--repo-url", default=REFERENCE_URL,
                        help=f"the GitHub repository the edition is published in (default {REFERENCE_URL})")
    args = parser.parse_args()
    try:
        counts, failures = make_student(args.out, args.repo_url)
    except (ValueError, EditionError) as err:
        sys.exit(f"make_student: {err}")
    print(f"student edition in {args.out}: " + ", ".join(f"{m} ({n} blocks)" for m, n in counts.items()))
    print("checked: no reference solution line left, answer cells blank; its tests fail only where a task is "
          "unwritten: " + ", ".join(f"{label.split(':')[0]} {n}" for label, n in failures.items()))


if __name__ == "__main__":
    main()
