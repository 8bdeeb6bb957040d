"""Grade a class: every submission, every task on its own, in parallel, into grades.csv and feedback.

Task T of a submission runs with the student's module for T and the reference modules for every
other task, so one bug costs its own task's points only. Identical (task, module) pairs run once.
"""
import json
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from labkit.grading import report
from labkit.grading.course import WEIGHTS, answer_cells, graded_cells, notebook_of, student_modules
from labkit.grading.runner import CHECKPOINT_TASKS, Limits, Runner, task_tests
from labkit.grading.submission import find_submissions, load_submission


def task_checks(reference, hidden, task):
    """What task ``task`` is graded on: its graded cells (with nbval node ids) and marked tests."""
    notebook = notebook_of(reference, task)
    checks = [dict(c, nodeid=f"notebooks/{notebook.name}::Cell {c['cell']}") for c in graded_cells(notebook)]
    wrong = [c["grade_id"] for c in checks if c["task"] != task]
    if wrong:
        raise ValueError(f"{notebook.name} tests Task {task} but holds checks of another task: {wrong}")
    tests = {}
    for name, folder in (("tests", Path(reference) / "tests"), ("hidden_tests", hidden)):
        for path, marked in task_tests(folder, task).items():
            rel = path.relative_to(folder).as_posix()
            tests.update({f"{name}/{rel}::{test}": points for test, points in marked.items()})
    return checks, tests


def cell_titles(reference, task):
    """nbval's code cell number -> the cell's first line, to name ungraded cells in feedback."""
    nb = json.loads(notebook_of(reference, task).read_text(encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return {i: (src.strip().splitlines() or [""])[0][:70] for i, src in enumerate(sources)}


def grade(paths, out, reference, hidden=None, limits=Limits(), jobs=1, log=print):
    """Grade the submissions under ``paths``; write grades.csv, answers.csv, feedback/ into ``out``.

    Returns the rows (one dict per student) and the maximum points per task.
    """
    reference, out = Path(reference).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    modules = student_modules(reference)
    plan = {task: task_checks(reference, hidden, task) for task in modules}
    titles = {task: cell_titles(reference, task) for task in modules}
    maxima = {t: sum(c["points"] for c in checks) + sum(tests.values()) for t, (checks, tests) in plan.items()}
    if maxima != {t: WEIGHTS[t] for t in maxima}:
        log(f"note: the points per task {maxima} differ from the course weights {WEIGHTS}")
    answer_points = {}
    for nb in sorted((reference / "notebooks").glob("[0-9]*.ipynb")):
        answer_points.update({g: p for g, (p, _) in answer_cells(nb).items()})

    unpacked = out / ".work" / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    subs = [load_submission(student, path, modules, reference, unpacked) for student, path in find_submissions(paths)]
    runner = Runner(reference, out, limits, hidden)

    jobs_of = {}  # (student, task) -> future
    todo = [(s, t) for s in subs if not s.malformed for t in modules if t not in s.problems]
    todo.sort(key=lambda st: (st[1] != 3, st[1]))  # the long task first: better packing over workers
    bar = tqdm(total=len(subs), desc="grading", unit="submission", disable=not sys.stderr.isatty())
    remaining = {s.student: sum(1 for x, _ in todo if x is s) for s in subs}
    bar.update(sum(1 for n in remaining.values() if n == 0))

    counting = threading.Lock()

    def done(student):
        def callback(_):
            with counting:
                remaining[student] -= 1
                if remaining[student] == 0:
                    bar.update(1)
        return callback

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        if any(task in CHECKPOINT_TASKS for _, task in todo):
            pool.submit(runner.checkpoints)  # first, so that no task run waits for it later
        unique = {}  # identical (task, module) pairs share one run: no worker waits on another's
        for sub, task in todo:
            key = runner.key(task, sub.modules[task])
            if key not in unique:
                unique[key] = pool.submit(runner.run, task, sub.modules[task], modules[task])
            unique[key].add_done_callback(done(sub.student))
            jobs_of[sub.student, task] = unique[key]
        rows = [_row(sub, modules, plan, titles, jobs_of) for sub in subs]
    bar.close()
    shutil.rmtree(out / ".work", ignore_errors=True)  # the runs' folders; .cache (checkpoints) stays
    report.write_grades(rows, out)
    report.write_answers(rows, answer_points, out)
    report.write_feedback(rows, maxima, out)
    log(report.summary(rows, maxima))
    return rows, maxima


def _row(sub, modules, plan, titles, jobs_of):
    row = {"student": sub.student, "tasks": {}, "detail": {}, "answers": sub.answers, "flags": list(sub.flags),
           "malformed": sub.malformed, "seconds": 0.0}
    statuses = set()
    for task in modules:
        checks, tests = plan[task]
        if sub.malformed or task in sub.problems:
            row["tasks"][task] = 0
            row["detail"][task] = {"status": "error", "problem": sub.malformed or sub.problems[task]}
            statuses.add("malformed" if sub.malformed else "error")
            continue
        try:
            result = jobs_of[sub.student, task].result()
        except Exception as err:  # the grader's own failure for this run: say so, keep the rest
            result = {"status": "error", "events": [], "seconds": 0.0, "forged": 0, "log_tail": repr(err)}
        scored = report.score_task(result, checks, tests)
        row["tasks"][task] = sum(c["points"] for c in scored)
        row["detail"][task] = {"status": result["status"], "checks": scored,
                               "cells": report.failed_cells(result, checks, titles[task])}
        row["seconds"] += result["seconds"]
        statuses.add(result["status"])
        if result["forged"]:
            row["flags"].append(f"task{task}: {result['forged']} report lines with a wrong signature")
    row["total"] = sum(row["tasks"].values())
    row["status"] = next((s for s in ("malformed", "timeout", "error") if s in statuses), "ok")
    row["seconds"] = round(row["seconds"], 1)
    return row
