"""Points from a run's events, and the files an instructor gets: grades.csv, answers.csv, feedback."""
import csv

from labkit.grading import report

CHECKS = [{"grade_id": "task1_a", "points": 2, "nodeid": "notebooks/01.ipynb::Cell 4", "expected": "✔ a\n"},
          {"grade_id": "task1_b", "points": 3, "nodeid": "notebooks/01.ipynb::Cell 6", "expected": "✔ b\n✔ c\n"}]


def ev(nodeid, outcome, when="call", **kw):
    return dict(id=nodeid, when=when, outcome=outcome, **kw)


def points(events, tests=None, status="ok"):
    rows = report.score_task({"events": events, "status": status}, CHECKS, tests or {})
    return {r["name"]: r["points"] for r in rows}


def test_only_a_seen_pass_scores():
    a, b = CHECKS[0]["nodeid"], CHECKS[1]["nodeid"]
    assert points([ev(a, "passed"), ev(b, "passed")]) == {"task1_a": 2, "task1_b": 3}
    assert points([ev(a, "passed")]) == {"task1_a": 2, "task1_b": 0}  # b never reported
    assert points([ev(a, "skipped"), ev(b, "xfail")]) == {"task1_a": 0, "task1_b": 0}
    assert points([ev(a, "passed"), ev(a, "failed", when="teardown")])["task1_a"] == 0
    assert points([ev(a, "passed", when="setup")])["task1_a"] == 0  # setup alone is no pass


def test_a_parametrised_task_test_scores_only_when_every_instance_passed():
    t = "tests/test_x.py::test_y"
    assert points([ev(t + "[0]", "passed"), ev(t + "[1]", "passed")], {t: 4})["test_y"] == 4
    assert points([ev(t + "[0]", "passed"), ev(t + "[1]", "failed", text="E assert 1 == 2")], {t: 4})["test_y"] == 0


def test_messages_say_what_the_reference_prints_or_why_nothing_was_seen():
    b = CHECKS[1]["nodeid"]
    rows = report.score_task({"events": [ev(b, "failed", text="Cell outputs differ", printed="✔ b\n✘ c\n")],
                              "status": "ok"}, CHECKS, {})
    assert rows[1]["message"].splitlines() == ["output differs from the reference; the reference prints:", "✔ c"]
    rows = report.score_task({"events": [], "status": "timeout"}, CHECKS, {})
    assert all("time limit" in r["message"] for r in rows)


def row(student, tasks, **kw):
    base = {"student": student, "tasks": tasks, "total": sum(tasks.values()), "status": "ok", "seconds": 12.5,
            "flags": [], "malformed": "", "answers": {"task3a_answer": "Means, then nearest.", "task4_answer": ""},
            "detail": {1: {"status": "ok", "checks": [{"name": "task1_a", "points": 0, "max": 2,
                                                       "printed": "✘ a\nnoise\n", "message": "output differs"}],
                           "cells": ["Cell 5 (not graded) failed: ValueError: bad"]}}}
    return dict(base, **kw)


def test_files_for_the_instructor(tmp_path):
    rows = [row("ada", {1: 8, 2: 40, 3: 40, 4: 10}),
            row("bob", {1: 0, 2: 0, 3: 0, 4: 0}, status="malformed", malformed="no labkit/ folder found",
                flags=["model.py: os._exit"])]
    maxima = {1: 10, 2: 40, 3: 40, 4: 10}
    report.write_grades(rows, tmp_path)
    report.write_answers(rows, {"task3a_answer": 4, "task4_answer": 2}, tmp_path)
    report.write_feedback(rows, maxima, tmp_path)
    grades = list(csv.DictReader(open(tmp_path / "grades.csv", encoding="utf-8")))
    assert grades[0] == {"student": "ada", "task1": "8", "task2": "40", "task3": "40", "task4": "10", "total": "98",
                         "status": "ok", "seconds": "12.5", "flagged": ""}
    assert grades[1]["status"] == "malformed" and grades[1]["flagged"] == "model.py: os._exit"
    answers = list(csv.DictReader(open(tmp_path / "answers.csv", encoding="utf-8")))
    assert [(a["student"], a["question"], a["max_points"], a["points"]) for a in answers] == [
        ("ada", "task3a_answer", "4", ""), ("ada", "task4_answer", "2", ""),
        ("bob", "task3a_answer", "4", ""), ("bob", "task4_answer", "2", "")]
    text = (tmp_path / "feedback" / "ada.md").read_text(encoding="utf-8")
    assert "# ada: 98 / 100 points (ok)" in text and "  - ✘ a" in text and "noise" not in text
    assert "Cell 5 (not graded) failed: ValueError: bad" in text and "Means, then nearest." in text
    assert "(no answer)" in text
    bob = (tmp_path / "feedback" / "bob.md").read_text(encoding="utf-8")
    assert "Not graded: no labkit/ folder found" in bob and "Flagged for review" in bob
    table = report.summary(rows, maxima).splitlines()
    assert table[0].split() == ["student", "T1/10", "T2/40", "T3/40", "T4/10", "total/100", "status", "seconds",
                                "flagged"]
    assert table[2].split()[:7] == ["ada", "8", "40", "40", "10", "98", "ok"] and table[3].endswith("yes")
