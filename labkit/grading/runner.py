"""One task run: a work folder assembled by the grader, pytest + nbval in a limited subprocess.

The work folder holds the reference's labkit with the student's module for this task only, the
reference notebook of the task (with its stored outputs) and the task's marked tests; a pytest ini
written here, never the submission's. The run is its own session (process group) with a thread
cap, a memory cap and a wall-clock limit; on expiry every process of the run is killed (the nbval
kernel, which starts its own session, too: each process carries the run's tag in its environment).
Results arrive per test, HMAC-signed, through a pipe (``labkit.grading.plugin``).
"""
import hashlib
import hmac
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.grading.course import marked_tests, notebook_of


CHECKPOINT_TASKS = {4}  # notebook 04 loads the models notebook 03 trains: reference ones, trained once


@dataclass(frozen=True)
class Limits:
    timeout: float = 300.0  # seconds per task run
    memory_mb: int = 6144  # address-space cap per process (RLIMIT_AS), where the OS has it
    threads: int = 1  # OMP/MKL threads: fixed, so points never depend on --jobs
    # $LABKIT_EPOCHS for notebooks 03 and 04; None: theirs on the bundled sample (labkit.experiment.lab_epochs),
    # which 'better than pixel space' needs: with fewer the reference passes it or not by the CPU's rounding
    epochs: int | None = None


def digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def tree_digest(*folders, patterns=("*.py", "*.ipynb", "*.npz")):
    """Hash of every matching file under the folders (paths and contents)."""
    parts = []
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for pattern in patterns:
            for path in sorted(Path(folder).rglob(pattern)):
                if "__pycache__" not in path.parts and ".ipynb_checkpoints" not in path.parts:
                    parts += [path.relative_to(folder).as_posix(), path.read_bytes()]
    return digest(*parts)


def task_tests(folder, task):
    """Test files under ``folder`` with tests marked for ``task``: {path: {test name: points}}."""
    found = {}
    for path in sorted(Path(folder).rglob("test*.py")) if folder and Path(folder).is_dir() else []:
        if "pytest.mark.task" in path.read_text(encoding="utf-8"):
            tests = {name: points for name, (t, points) in marked_tests(path).items() if t == task}
            if tests:
                found[path] = tests
    return found


class Runner:
    """Runs (task, student module text) pairs against one reference; results cached by content hash."""

    def __init__(self, reference, out, limits=Limits(), hidden=None):
        self.reference, self.limits = Path(reference), limits
        self.hidden = Path(hidden) if hidden else None
        self.scratch = Path(out) / ".work"
        self.cache_dir = Path(out) / ".cache"
        self.fingerprint = digest(tree_digest(self.reference / "labkit", self.reference / "notebooks",
                                              self.reference / "tests"), tree_digest(self.hidden),
                                  json.dumps(asdict(limits), sort_keys=True))
        self._cache, self._locks, self._lock = {}, {}, threading.Lock()

    def key(self, task, module_text):
        return digest(task, module_text if module_text is not None else b"\1reference", self.fingerprint)

    def run(self, task, module_text, rel):
        """Result of grading ``module_text`` as ``rel`` (e.g. labkit/model.py) for ``task``; cached."""
        key = self.key(task, module_text)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # identical inputs run once; a second caller waits and shares the result
            if key not in self._cache:
                self._cache[key] = self._run(task, module_text, rel, key)
            return self._cache[key]

    # -- checkpoints for notebook 04: trained once per reference (its labkit code and the epochs)
    def checkpoints(self):
        """The folder of the reference checkpoints, or None when the reference cannot train them (a
        student's self-check with Task 1-2 unsolved): notebook 04 then trains, or fails, on its own."""
        with self._lock:
            lock = self._locks.setdefault("checkpoints", threading.Lock())
        with lock:
            if getattr(self, "_checkpoint_error", None):
                return None
            try:
                return self._train_checkpoints()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                self._checkpoint_error = str(err)
                return None

    def _train_checkpoints(self):
        tag = digest(tree_digest(self.reference / "labkit"), self.limits.epochs)[:16]
        folder = self.cache_dir / f"checkpoints-{tag}"
        if (folder / "done").exists():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        code = ("from labkit.experiment import Settings, lab_epochs, load_or_train\n"
                "for name, removed in (('embedding.pt', None), ('embedding_no0.pt', 0)):\n"
                "    load_or_train(name, Settings(lab_epochs('sample'), remove_class=removed), "
                f"folder={str(folder)!r})\n")
        for sub in ("home", "tmp"):
            (self.cache_dir / "train" / sub).mkdir(parents=True, exist_ok=True)
        env = self._env(self.cache_dir / "train", task=None)
        env["PYTHONPATH"] = str(self.reference)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=max(self.limits.timeout, 600))
        if done.returncode:
            raise RuntimeError(f"training the reference checkpoints failed:\n{done.stderr[-3000:]}")
        (folder / "done").write_text("trained by the grader with the reference solution\n")
        return folder

    # -- one run
    def _assemble(self, work, task, module_text, rel):
        shutil.copytree(self.reference / "labkit", work / "labkit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if module_text is not None:
            (work / rel).write_text(module_text, encoding="utf-8")
        notebook = notebook_of(self.reference, task)
        (work / "notebooks").mkdir()
        shutil.copy(notebook, work / "notebooks" / notebook.name)
        targets = [f"notebooks/{notebook.name}"]
        for name, folder in (("tests", self.reference / "tests"), ("hidden_tests", self.hidden)):
            marked = task_tests(folder, task)
            if marked:
                shutil.copytree(folder, work / name, ignore=shutil.ignore_patterns("__pycache__", "conftest.py")
                                if name == "tests" else shutil.ignore_patterns("__pycache__"))
                targets += [f"{name}/{p.relative_to(folder).as_posix()}" for p in marked]
        (work / "grade.ini").write_text("[pytest]\naddopts =\npython_files = test*.py\n")
        for sub in ("home", "tmp", "out"):
            (work / sub).mkdir()
        checkpoints = self.checkpoints() if task in CHECKPOINT_TASKS else None
        if checkpoints is not None:
            shutil.copytree(checkpoints, work / "checkpoints", ignore=shutil.ignore_patterns("done"))
        return targets

    def _env(self, work, task):
        work = Path(work)
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT") if k in os.environ}
        threads = str(self.limits.threads)
        env.update(HOME=str(work / "home"), TMPDIR=str(work / "tmp"), PYTHONPATH=str(work),
                   LABKIT_DATA="sample", LABKIT_DEVICE="cpu", LABKIT_PROGRESS="0",
                   LABKIT_OUTPUT=str(work / "out"), LABKIT_CHECKPOINTS=str(work / "checkpoints"),
                   OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads, PYTHONHASHSEED="0",
                   PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                   CUDA_VISIBLE_DEVICES="", LABKIT_GRADE_TASK=str(task or ""))
        if self.limits.epochs is not None:
            env["LABKIT_EPOCHS"] = str(self.limits.epochs)
        return env

    def _run(self, task, module_text, rel, key):
        work = self.scratch / key[:20]
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            targets = self._assemble(work, task, module_text, rel)  # checkpoints: not the student's time
            return self._execute(work, task, targets, time.monotonic())
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _execute(self, work, task, targets, start):
        secret, tag = secrets.token_hex(32), secrets.token_hex(8)
        env = self._env(work, task)
        env["LABKIT_GRADE_RUN"] = tag
        read_fd, write_fd = os.pipe()
        env.update(LABKIT_GRADE_FD=str(write_fd), LABKIT_GRADE_SECRET=secret)
        cmd = [sys.executable, "-m", "pytest", "-c", str(work / "grade.ini"), "--rootdir", str(work),
               "--confcutdir", str(work), "-p", "no:cacheprovider", "-p", "nbval.plugin",
               "-p", "labkit.grading.plugin", "--nbval", "--nbval-current-env", "-q", *targets]
        with open(work / "pytest.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, pass_fds=(write_fd,), start_new_session=True,
                                    preexec_fn=_limit_memory(self.limits.memory_mb))
        os.close(write_fd)
        events, forged, timed_out, buf = [], 0, False, b""
        deadline = start + self.limits.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not select.select([read_fd], [], [], min(left, 1.0))[0]:
                    continue
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:  # every writer closed: pytest has exited
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    event = _verify(line, secret.encode())
                    if event is None:
                        forged += 1
                    else:
                        events.append(event)
            if not timed_out:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:
            os.close(read_fd)
            _kill_run(proc, tag)
        finished = any(e["when"] == "finish" for e in events)
        log_tail = (work / "pytest.log").read_bytes()[-3000:].decode("utf-8", errors="replace")
        return {"task": task, "status": "timeout" if timed_out else "ok" if finished else "error",
                "seconds": round(time.monotonic() - start, 1), "events": events, "forged": forged,
                "log_tail": log_tail, "tag": tag}


def _verify(line, secret):
    mac, _, payload = line.partition(b" ")
    expected = hmac.new(secret, payload, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    return event if isinstance(event, dict) and {"id", "when", "outcome"} <= event.keys() else None


def _limit_memory(megabytes):
    def limit():
        try:
            import resource
            cap = megabytes * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, ValueError, OSError):  # not on this OS: the wall-clock limit still holds
            pass
    return limit if megabytes else None


def _kill_run(proc, tag):
    """Kill the run's process group and every process carrying its tag (the nbval kernel's own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        for p in psutil.process_iter():
            try:
                if p.environ().get("LABKIT_GRADE_RUN") == tag:
                    p.kill()
            except (psutil.Error, OSError):
                continue
    proc.wait()
