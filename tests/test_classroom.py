"""GitHub Classroom: the edition's workflow is valid, runs on push, grades as documented, reports points."""
import base64
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "scripts" / "edition" / "classroom.yml"
sys.path.insert(0, str(REPO / "scripts"))
import classroom  # noqa: E402


@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow):
    (job,) = workflow["jobs"].values()
    return job["steps"]


def step(workflow, name_part):
    (found,) = [s for s in steps(workflow) if name_part in s.get("name", "")]
    return found


def test_workflow_runs_on_every_push_with_classroom_permissions(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert "push" in triggers
    assert workflow["permissions"]["checks"] == "write"
    (job,) = workflow["jobs"].values()
    assert job["name"] == workflow["name"] == "Autograding Tests"  # the check run the reporter updates
    assert "github-classroom[bot]" in job["if"]


def test_reference_is_checked_out_with_the_documented_secret_and_variable(workflow):
    ref = step(workflow, "instructor's reference")
    assert ref["uses"].startswith("actions/checkout@")
    assert ref["with"]["token"] == "${{ secrets.LABKIT_REFERENCE_TOKEN }}"
    assert ref["with"]["repository"] == "${{ vars.LABKIT_REFERENCE_REPO }}"
    for name in ("LABKIT_REFERENCE_TOKEN", "LABKIT_REFERENCE_REPO", "LABKIT_REFERENCE_REF"):
        assert name in WORKFLOW.read_text() and name in (REPO / "README.md").read_text(), name


def test_grader_command_is_the_documented_one(workflow):
    script = step(workflow, "Grade with the reference")["run"]
    assert "--index-url" in script and "download.pytorch.org/whl/cpu" in WORKFLOW.read_text()  # CPU torch
    (line,) = [line for line in script.splitlines() if "-m labkit.grade" in line]
    argv = shlex.split(line.replace("${{ github.actor }}", "octocat"))
    assert argv[:3] == ["python", "-m", "labkit.grade"]
    try:
        from labkit.grade import parse_args
    except ImportError:  # the grader is not on this branch: the documented form, as a string
        assert argv[3:] == ["../submission/octocat", "--out", "../grades", "--jobs", "2"]
    else:
        args = parse_args(argv[3:])
        assert args.submissions == [Path("../submission/octocat")] and args.out == Path("../grades")
    assert "scripts/classroom.py ../grades" in script


def test_points_are_reported_and_the_fallback_is_make_check(workflow):
    reporter = step(workflow, "Report the points")
    assert reporter["uses"].startswith("classroom-resources/autograding-grading-reporter@")
    assert reporter["with"]["runners"] == "grader"
    assert reporter["env"]["GRADER_RESULTS"] == "${{ steps.grader.outputs.result }}"
    fallback = step(workflow, "Self-check only")
    assert re.search(r"^make check", fallback["run"], re.M)
    assert "REFERENCE_TOKEN == ''" in fallback["if"] and "REFERENCE_TOKEN != ''" in step(workflow, "Grade with")["if"]


def test_payload_carries_points_per_task(tmp_path):
    grades = tmp_path / "grades"
    (grades / "feedback").mkdir(parents=True)
    (grades / "grades.csv").write_text("student,task1,task2,task3,task4,total,status,seconds,flagged\n"
                                       "octocat,10,25,40,0,75,ok,93.2,\n")
    (grades / "feedback" / "octocat.md").write_text("## Task 2\n✘ loss equals torch.nn.TripletMarginLoss\n")
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    classroom.main([str(grades), "--summary", str(summary), "--output", str(output)])
    key, encoded = output.read_text().strip().split("=", 1)
    result = json.loads(base64.b64decode(encoded))
    assert key == "result" and result["max_score"] == 100 and result["status"] == "fail"
    assert [(t["name"], t["score"], t["status"]) for t in result["tests"]] == [
        ("Task 1", 10, "pass"), ("Task 2", 25, "fail"), ("Task 3", 40, "pass"), ("Task 4", 0, "fail")]
    text = summary.read_text()
    assert "| Task 2 | 25 / 40 |" in text and "**75 / 100**" in text and "✘ loss equals" in text


def test_edition_carries_the_workflow(tmp_path):
    from make_student import make_student
    make_student(tmp_path / "student", run_tests=False)
    assert (tmp_path / "student" / ".github" / "workflows" / "classroom.yml").read_text() == WORKFLOW.read_text()
