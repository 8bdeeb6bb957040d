"""What is graded: the student modules and their tasks, the graded check cells and answer cells.

The one mapping from student module to task lives here (``TASKS``); notebook N tests task N.
Points come from the notebooks' nbgrader metadata and from ``@pytest.mark.task(N, points=P)``
markers on task tests, never from a table in the code.
"""
import ast
import json
import re
from pathlib import Path

TASKS = {"dataset.py": 1, "model.py": 2, "classify.py": 3, "viz.py": 4}  # labkit module -> task
WEIGHTS = {1: 10, 2: 40, 3: 40, 4: 10}  # the course's weights; the metadata must add up to them
BEGIN = re.compile(r"^\s*# BEGIN SOLUTION\s*$", re.M)
GRADE_ID = re.compile(r"^task(\d+)")


def student_modules(root):
    """{task: 'labkit/<module>.py'} for every labkit module of ``root`` holding a solution block."""
    found = {}
    for path in sorted(Path(root, "labkit").glob("*.py")):
        if BEGIN.search(path.read_text(encoding="utf-8")):
            if path.name not in TASKS:
                raise ValueError(f"labkit/{path.name} has a solution block but no task; add it to "
                                 f"labkit.grading.course.TASKS")
            found[TASKS[path.name]] = f"labkit/{path.name}"
    if not found:
        raise ValueError(f"no labkit module under {root} holds a '# BEGIN SOLUTION' block")
    return found


def notebook_of(root, task):
    """The notebook that tests ``task``: notebooks/0N_*.ipynb (exactly one)."""
    matches = sorted(Path(root, "notebooks").glob(f"{task:02d}_*.ipynb"))
    if len(matches) != 1:
        raise ValueError(f"expected one notebook notebooks/{task:02d}_*.ipynb for Task {task}, found {len(matches)}")
    return matches[0]


def task_of(grade_id):
    match = GRADE_ID.match(grade_id)
    if not match:
        raise ValueError(f"grade_id {grade_id!r} does not start with task<N>")
    return int(match.group(1))


def _nbgrader(cell):
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if meta.get("grade") else None


def graded_cells(notebook):
    """Graded check cells: [{'grade_id', 'task', 'points', 'cell': nbval's code cell number, 'expected': text}]."""
    cells, code_index = [], 0
    for cell in json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        meta = _nbgrader(cell)
        if meta and not meta.get("solution"):
            expected = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
            cells.append({"grade_id": meta["grade_id"], "task": task_of(meta["grade_id"]),
                          "points": meta["points"], "cell": code_index, "expected": expected})
        code_index += 1
    return cells


def answer_cells(notebook):
    """Written answers (manually graded markdown cells): {grade_id: (points, text)}."""
    answers = {}
    for cell in json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]:
        meta = _nbgrader(cell)
        if cell["cell_type"] == "markdown" and meta and meta.get("solution"):
            source = cell["source"]
            answers[meta["grade_id"]] = (meta["points"], "".join(source) if isinstance(source, list) else source)
    return answers


def marked_tests(test_file):
    """Task tests of a file: {test function name: (task, points)} from ``@pytest.mark.task(N, points=P)``."""
    tests = {}
    for node in ast.walk(ast.parse(Path(test_file).read_text(encoding="utf-8"))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and ast.unparse(deco.func) in ("pytest.mark.task", "mark.task"):
                task = ast.literal_eval(deco.args[0])
                points = next((ast.literal_eval(k.value) for k in deco.keywords if k.arg == "points"), 1)
                tests[node.name] = (task, points)
    return tests
