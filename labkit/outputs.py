"""What a run leaves behind: the output folder, figures, and the results file with its table.

The folder is ``$LABKIT_OUTPUT`` if set (the README's main command points it at ``out/``), else
``./outputs``. Every file is written atomically: complete, or not at all; a full disk says so.
The results file is updated under a lock, so processes writing at once lose no entry.
"""
import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs there may still race
    fcntl = None

OUTPUT_ENV = "LABKIT_OUTPUT"
DEFAULT_OUTPUT = "outputs"
RESULTS_FILE = "results.json"


def output_dir(folder=None):
    path = Path(folder if folder is not None else os.environ.get(OUTPUT_ENV, DEFAULT_OUTPUT))
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; keep the usual (or the old file's) mode
        with _open_fd(fd) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, f"the disk is full (or your quota is used up): {path} could not be "
                                     f"written and is unchanged. Free some space on {path.parent} and run "
                                     f"it again") from exc
        raise
    return path


def _open_fd(fd):
    return os.fdopen(fd, "wb")  # one place to open the temporary file (the tests fill the disk here)


def _file_mode(path):
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save_figure(fig, name, folder=None):
    """Write a matplotlib figure as ``<output>/figures/<name>.png``; returns the path."""
    path = output_dir(folder) / "figures" / f"{name}.png"
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def record_result(key, folder=None, **fields):
    """Add or replace one entry (e.g. ``"3b"``) of the results file; returns the whole results dict.

    Read, update and write happen under a lock on ``.results.json.lock``: entries that other
    processes record at the same time are all kept.
    """
    text = json.dumps(fields)  # refuse what JSON cannot hold before touching the file
    with results_lock(folder):
        results = load_results(folder)
        results[key] = json.loads(text)
        text = json.dumps(results, indent=2, sort_keys=True) + "\n"
        atomic_write(output_dir(folder) / RESULTS_FILE, lambda f: f.write(text.encode()))
    return results


@contextlib.contextmanager
def results_lock(folder=None):
    """Hold an exclusive lock on the results file of ``folder`` (a no-op where fcntl is missing)."""
    with open(output_dir(folder) / f".{RESULTS_FILE}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def load_results(folder=None):
    path = output_dir(folder) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); it was not written by labkit's atomic writer. "
                         f"Move it away (nothing else reads it) and run again.") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path} holds a {type(results).__name__}, not labkit's results; move it away")
    return results


def format_table(rows, columns):
    """A plain-text table. ``rows`` are dicts; ``columns`` are (key, header) or (key, header, format)
    with a format such as ``"{:.2%}"``. Missing values show as ``-``."""
    def cell(row, column):
        key, fmt = column[0], (column[2] if len(column) > 2 else "{}")
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    headers = [c[1] for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in cells])
