"""The grader's pytest plugin: streams each test's outcome, signed, to the grader as it happens.

Loaded by the grader only (``-p labkit.grading.plugin``). At configure time, before any student
module is imported, it takes the pipe fd and the run's secret out of the environment (so the nbval
kernel, a separate process, inherits neither); every report line carries an HMAC of that secret.
A result that never arrives (a crash, ``os._exit``, a timeout) is simply missing: it scores zero.
With ``LABKIT_GRADE_TASK=N``, Python tests run only when marked ``@pytest.mark.task(N, ...)``.
"""
import hashlib
import hmac
import json
import os

import pytest

MAX_TEXT = 4000


class Reporter:
    def __init__(self, fd, secret, task):
        self.fd, self.secret, self.task = fd, secret, task

    def send(self, **payload):
        line = json.dumps(payload, ensure_ascii=True)
        mac = hmac.new(self.secret, line.encode(), hashlib.sha256).hexdigest()
        try:
            os.write(self.fd, f"{mac} {line}\n".encode())
        except OSError:  # the grader stopped listening (timeout): nothing more counts anyway
            pass

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        keep, drop = [], []
        for item in items:
            if not hasattr(item, "cell_num"):  # a Python test: only the marked tests of this task
                marker = item.get_closest_marker("task")
                if self.task is None or marker is None or not marker.args or marker.args[0] != self.task:
                    drop.append(item)
                    continue
            keep.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_collectreport(self, report):
        if report.failed:
            self.send(id=report.nodeid, when="collect", outcome="failed", text=report.longreprtext[-MAX_TEXT:])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        outputs = getattr(item, "test_outputs", None)  # nbval: what the cell printed this time
        if report.when != "call" and report.passed:
            return
        self.send(id=report.nodeid, when=report.when,
                  outcome="xfail" if hasattr(report, "wasxfail") else report.outcome,
                  text="" if report.passed else report.longreprtext[-MAX_TEXT:],
                  printed=_printed(outputs)[-MAX_TEXT:])

    def pytest_sessionfinish(self, session, exitstatus):
        self.send(id="", when="finish", outcome=str(int(exitstatus)))


def _printed(outputs):
    lines = []
    for out in outputs or []:
        if out.get("output_type") == "stream":
            lines.append(out.get("text", ""))
        elif out.get("output_type") == "error":
            lines.append(f"{out.get('ename')}: {out.get('evalue')}\n")
    return "".join(lines)


def _fail_fast_on_a_dead_kernel():
    """nbval waits for a cell's reply up to its cell timeout even when the kernel has died (e.g.
    ``os._exit`` in a student module): poll in one-second slices and fail the cell at once instead."""
    try:
        from queue import Empty

        from nbval.kernel import RunningKernel
    except ImportError:
        return
    original = RunningKernel.await_reply

    def await_reply(self, msg_id, timeout=None):
        waited = 0
        while True:
            try:
                return original(self, msg_id, timeout=1)
            except Empty:
                waited += 1
                if not self.is_alive():
                    raise RuntimeError("the kernel died while running this cell (os._exit, a crash or "
                                       "the memory limit)") from None
                if timeout is not None and waited >= timeout:
                    raise

    RunningKernel.await_reply = await_reply


def pytest_configure(config):
    config.addinivalue_line("markers", "task(number, points=1): a task test worth points for that task")
    fd, secret = os.environ.pop("LABKIT_GRADE_FD", None), os.environ.pop("LABKIT_GRADE_SECRET", None)
    if fd is None or secret is None:
        return
    os.set_inheritable(int(fd), False)
    _fail_fast_on_a_dead_kernel()
    task = os.environ.get("LABKIT_GRADE_TASK")
    config.pluginmanager.register(Reporter(int(fd), secret.encode(), int(task) if task else None), "labkit-grade")
