"""From a task run's signed events to points, and from points to grades.csv, feedback and answers.csv.

A check scores only when its pass was seen: a missing event, a skip, an xfail or an uncollected
check scores zero.
"""
import csv
import re
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MARKS = ("✔", "✘")
TASK_COLUMNS = ["task1", "task2", "task3", "task4"]


def _passed(events):
    return (any(e["when"] == "call" and e["outcome"] == "passed" for e in events)
            and not any(e["outcome"] in ("failed", "skipped", "xfail") for e in events))


def _message(events, expected=""):
    """The essentials of a failure: what the reference printed instead, or the exception's last lines."""
    for e in events:
        if e["outcome"] == "failed" and "Cell outputs differ" in e.get("text", ""):
            printed = set(e.get("printed", "").splitlines())
            missing = [ln for ln in expected.splitlines() if ln not in printed]
            return "\n".join(["output differs from the reference; the reference prints:", *missing[:8]])
        if e["outcome"] != "passed" and e.get("text"):
            lines = [ln.rstrip() for ln in ANSI.sub("", e["text"]).splitlines() if ln.strip()]
            keep = [ln for ln in lines if re.search(r"Error|Exception|differ|Timeout|dead|assert|^E ", ln)]
            return "\n".join((keep or lines)[-8:])
        if e["outcome"] in ("skipped", "xfail"):
            return f"{e['outcome']}: a skipped check scores nothing"
    return ""


def score_task(result, checks, tests):
    """Per-check results of one task run.

    ``checks``: the graded cells of the task's notebook (labkit.grading.course.graded_cells);
    ``tests``: {nodeid of a marked test function: points}. Returns a list of dicts with name, points,
    max, printed, message.
    """
    by_id = {}
    for e in result.get("events", []):
        by_id.setdefault(e["id"], []).append(e)
    rows = []
    for check in checks:
        events = by_id.get(check["nodeid"], [])
        ok = _passed(events)
        printed = "".join(e.get("printed", "") for e in events) or ""
        rows.append({"name": check["grade_id"], "max": check["points"], "points": check["points"] if ok else 0,
                     "printed": printed if events else "", "message": "" if ok else _message(events, check["expected"]) or _missing(result)})
    for nodeid, points in tests.items():
        events = [e for i, evs in by_id.items() if i == nodeid or i.startswith(nodeid + "[") for e in evs]
        ok = bool(events) and _passed(events)
        rows.append({"name": nodeid.split("::")[-1], "max": points, "points": points if ok else 0, "printed": "",
                     "message": "" if ok else _message(events) or _missing(result)})
    return rows


def _missing(result):
    if result.get("status") == "timeout":
        return "not seen to pass: the run was stopped at the time limit"
    if result.get("status") == "error":
        return "not seen to pass: the test process ended early (a crash, os._exit or the memory limit)"
    return "not run: the check was not collected or never reported"


def failed_cells(result, checks, titles=None):
    """Ungraded cells that failed (e.g. training crashing): they explain why later checks fail.
    ``titles``: {nbval cell number: the cell's first line}, to name the cell."""
    graded = {c["nodeid"] for c in checks}
    lines = []
    for e in result.get("events", []):
        if e["outcome"] == "failed" and e["id"] not in graded and "::Cell" in e["id"]:
            number = int(e["id"].rsplit(" ", 1)[-1])
            name = f"the cell `{titles[number]}`" if titles and titles.get(number) else f"cell {number}"
            error = [ln for ln in e.get("printed", "").splitlines() if re.match(r"\w+(Error|Exception)\b", ln)]
            lines.append(f"{name} (not graded) failed" + (f": {error[-1]}" if error else ""))
    return lines


def write_grades(rows, out):
    with open(Path(out) / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *TASK_COLUMNS, "total", "status", "seconds", "flagged"])
        for r in rows:
            writer.writerow([r["student"], *(r["tasks"].get(t, 0) for t in range(1, 5)), r["total"], r["status"],
                             r["seconds"], "; ".join(r["flags"])])


def write_answers(rows, answer_points, out):
    with open(Path(out) / "answers.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "question", "max_points", "answer", "points"])
        for r in rows:
            for grade_id, points in answer_points.items():
                writer.writerow([r["student"], grade_id, points, r["answers"].get(grade_id, ""), ""])


def feedback_text(row, maxima):
    out = [f"# {row['student']}: {row['total']} / {sum(maxima.values())} points ({row['status']})", ""]
    if row["malformed"]:
        out += [f"Not graded: {row['malformed']}", ""]
    if row["flags"]:
        out += ["Flagged for review: " + "; ".join(row["flags"]), ""]
    for task in sorted(maxima):
        detail = row["detail"].get(task, {})
        out += [f"## Task {task}: {row['tasks'].get(task, 0)} / {maxima[task]}"
                + (f" ({detail['status']})" if detail.get("status", "ok") != "ok" else ""), ""]
        if detail.get("problem"):
            out += [f"- {detail['problem']}", ""]
        for check in detail.get("checks", []):
            out.append(f"- **{check['name']}** {check['points']} / {check['max']}")
            marks = [ln for ln in check["printed"].splitlines() if ln.startswith(MARKS)]
            out += [f"  - {ln}" for ln in marks]
            if check["message"]:
                out += ["  ```", *(f"  {ln}" for ln in check["message"].splitlines()), "  ```"]
        out += [f"- {line}" for line in detail.get("cells", [])]
        out.append("")
    if row["answers"]:
        out += ["## Written answers (graded by hand)", ""]
        for grade_id, text in row["answers"].items():
            out += [f"### {grade_id}", "", text or "(no answer)", ""]
    return "\n".join(out)


def write_feedback(rows, maxima, out):
    folder = Path(out) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (folder / f"{r['student']}.md").write_text(feedback_text(r, maxima), encoding="utf-8")


def summary(rows, maxima):
    """The table printed at the end: one line per student."""
    head = ["student", *(f"T{t}/{m}" for t, m in sorted(maxima.items())), f"total/{sum(maxima.values())}",
            "status", "seconds", "flagged"]
    body = [[r["student"], *(str(r["tasks"].get(t, 0)) for t in sorted(maxima)), str(r["total"]), r["status"],
             f"{r['seconds']:.0f}", "yes" if r["flags"] else ""] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
