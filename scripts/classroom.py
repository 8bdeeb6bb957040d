"""GitHub Classroom glue: one student's row of grades.csv as the autograding reporter's payload.

    python scripts/classroom.py GRADES_DIR [--summary FILE] [--output FILE]

Run by the edition's workflow (.github/workflows/classroom.yml) from the instructor's reference
checkout after ``python -m labkit.grade``. It appends a per-task table and the student's feedback to
``--summary`` (the job summary, ``$GITHUB_STEP_SUMMARY``) and writes ``result=<base64 JSON>`` to
``--output`` (``$GITHUB_OUTPUT``): the payload ``classroom-resources/autograding-grading-reporter``
reads from ``<RUNNER>_RESULTS`` and reports to Classroom (``max_score`` and each test's ``score``;
one test per task).
"""
import argparse
import base64
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_student import REPO, task_points  # noqa: E402


def max_points():
    """{task: automatic points}: the grader's course weights where it has them, else the notebooks'."""
    try:
        from labkit.grading.course import WEIGHTS
        return dict(WEIGHTS)
    except ImportError:
        return {task: auto for task, (auto, _) in task_points(REPO / "notebooks").items()}


def payload(row, maxima):
    """The reporter's runner result for one grades.csv row."""
    tests = []
    for task, most in maxima.items():
        score = float(row.get(f"task{task}") or 0)
        tests.append({"name": f"Task {task}", "status": "pass" if score >= most else "fail", "score": score,
                      "message": f"{score:g}/{most} points", "line_no": 0, "test_code": ""})
    total = sum(t["score"] for t in tests)
    status = "pass" if row.get("status") == "ok" and total >= sum(maxima.values()) else "fail"
    if row.get("status") not in ("ok", None):
        status = "error"
    return {"version": 1, "status": status, "max_score": sum(maxima.values()), "tests": tests}


def summary(row, maxima, feedback=""):
    lines = ["## Autograding", "", "| task | points |", "|---|---|"]
    lines += [f"| Task {t} | {float(row.get(f'task{t}') or 0):g} / {m} |" for t, m in maxima.items()]
    lines += [f"| **total** | **{float(row.get('total') or 0):g} / {sum(maxima.values())}** |", "",
              f"status: {row.get('status')}; graded in {row.get('seconds')} s", ""]
    if feedback:
        lines += ["<details><summary>feedback</summary>", "", feedback, "", "</details>", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grades", type=Path, help="the --out folder of python -m labkit.grade")
    parser.add_argument("--summary", type=Path, help="append the table here (the job summary)")
    parser.add_argument("--output", type=Path, help="append result=<payload> here ($GITHUB_OUTPUT)")
    args = parser.parse_args(argv)
    with open(args.grades / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        sys.exit(f"classroom: expected one student in {args.grades / 'grades.csv'}, found {len(rows)}")
    row, maxima = rows[0], max_points()
    feedback_file = args.grades / "feedback" / f"{row['student']}.md"
    text = summary(row, maxima, feedback_file.read_text(encoding="utf-8") if feedback_file.exists() else "")
    print(text)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    encoded = base64.b64encode(json.dumps(payload(row, maxima)).encode()).decode()
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(f"result={encoded}\n")


if __name__ == "__main__":
    main()
