"""Submissions: find them, unpack zips safely, and take from each only what a student writes.

A submission is a workbook folder (holding ``labkit/``), a ``.zip`` of one, or a folder of those
(one per student, named by the student's id). From it the grader reads the student modules (whole
files) and the text of the answer cells; everything else comes from the instructor's reference.
"""
import json
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.grading.course import answer_cells

MAX_UNPACKED = 200 * 2**20  # bytes a zip may unpack to; a workbook is ~2 MB
MAX_MEMBERS = 5000
# things a solution never needs: their presence flags a submission for a human to look at
SUSPICIOUS = ["os._exit", "sys.modules", "labkit.checks", "_line", "builtins", "pytest", "subprocess",
              "socket", "__import__", "ctypes", "signal"]


class Malformed(Exception):
    """The submission cannot be graded at all; the message says why and what to hand in instead."""


@dataclass
class Submission:
    student: str
    path: Path
    modules: dict = field(default_factory=dict)  # task -> source text, or None when missing
    problems: dict = field(default_factory=dict)  # task -> why its module cannot run
    answers: dict = field(default_factory=dict)  # grade_id -> text
    flags: list = field(default_factory=list)
    malformed: str = ""


def find_submissions(paths):
    """[(student id, path)] for the given paths; a path that is neither workbook nor zip is kept too
    (it becomes a 'malformed' row). A path that does not exist is an error: most likely a typo."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: give submission folders, .zip files, or a folder of them")
        if path.is_dir() and not (path / "labkit").is_dir() and not path.name.startswith("."):
            children = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
            found += [(_student_id(p), p) for p in children]
        else:
            found.append((_student_id(path), path))
    ids = [s for s, _ in found]
    duplicates = sorted({s for s in ids if ids.count(s) > 1})
    if duplicates:
        raise ValueError(f"two submissions share the id(s) {duplicates}; rename one of each pair")
    return found


def _student_id(path):
    name = path.name[:-4] if path.name.lower().endswith(".zip") else path.name
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", name) or "unnamed"


def unpack(archive, dest):
    """Extract a zip into ``dest`` refusing absolute or ``..`` paths, links and absurd sizes."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise Malformed(f"not a readable zip file ({err}); hand in a .zip of the workbook folder") from err
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise Malformed(f"the zip holds {len(members)} files (at most {MAX_MEMBERS}); zip only the workbook")
        if sum(m.file_size for m in members) > MAX_UNPACKED:
            raise Malformed(f"the zip unpacks to more than {MAX_UNPACKED >> 20} MB; zip only the workbook, "
                            f"without data/ or checkpoints")
        for m in members:
            parts = Path(m.filename.replace("\\", "/")).parts
            if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise Malformed(f"the zip holds the unsafe path {m.filename!r}; zip the workbook folder itself")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise Malformed(f"the zip holds a symbolic link {m.filename!r}; zip plain files only")
        dest.mkdir(parents=True, exist_ok=True)
        for m in members:  # names checked above; extract one by one, counting real bytes written
            target = dest.joinpath(*Path(m.filename.replace("\\", "/")).parts)
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                out.write(src.read(MAX_UNPACKED + 1)[:MAX_UNPACKED])
    return dest


def workbook_root(folder):
    """The folder holding ``labkit/``: the folder itself or one level down (a zip of 'metric-lab/')."""
    if (folder / "labkit").is_dir():
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir() and (p / "labkit").is_dir()]
    if len(inner) == 1:
        return inner[0]
    raise Malformed("no labkit/ folder found: hand in the whole workbook folder (with labkit/ and notebooks/)")


def load_submission(student, path, reference_modules, reference, scratch):
    """Read what the grader takes from one submission. Never raises: problems are recorded."""
    sub = Submission(student, Path(path))
    try:
        if path.is_file() and path.suffix.lower() == ".zip":
            root = workbook_root(unpack(path, scratch / student))
        elif path.is_dir():
            root = workbook_root(path)
        else:
            raise Malformed("neither a folder nor a .zip file")
        _read_modules(sub, root, reference_modules, reference)
        _read_answers(sub, root, reference)
    except Malformed as err:
        sub.malformed = str(err)
    return sub


def _read_modules(sub, root, reference_modules, reference):
    for task, rel in reference_modules.items():
        file = root / rel
        if not file.is_file():
            sub.problems[task] = f"{rel} is missing from the submission"
            continue
        text = file.read_bytes().decode("utf-8", errors="replace")
        try:
            compile(text, rel, "exec")
        except SyntaxError as err:
            sub.problems[task] = f"{rel} does not compile: {err.msg} (line {err.lineno})"
        except ValueError as err:  # e.g. null bytes
            sub.problems[task] = f"{rel} does not compile: {err}"
        sub.modules[task] = text
        own = (reference / rel).read_text(encoding="utf-8")
        sub.flags += [f"{Path(rel).name}: {word}" for word in SUSPICIOUS if word in text and word not in own]
    if not sub.modules:
        raise Malformed("none of the student modules (" + ", ".join(reference_modules.values()) + ") is there")


def _read_answers(sub, root, reference):
    for notebook in sorted((reference / "notebooks").glob("[0-9]*.ipynb")):
        expected = answer_cells(notebook)
        if not expected:
            continue
        theirs = root / "notebooks" / notebook.name
        try:
            found = answer_cells(theirs) if theirs.is_file() else {}
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            found = {}
        for grade_id in expected:
            sub.answers[grade_id] = found[grade_id][1].strip() if grade_id in found else ""
