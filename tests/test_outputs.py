import json
import os
import stat

import pytest

from labkit.outputs import atomic_write, format_table, load_results, record_result, save_figure


def test_results_file_accumulates_entries(tmp_path):
    record_result("3b", tmp_path, accuracy=0.9, source="sample")
    record_result("3c", tmp_path, accuracy=0.8)
    record_result("3b", tmp_path, accuracy=0.95)
    assert load_results(tmp_path) == {"3b": {"accuracy": 0.95}, "3c": {"accuracy": 0.8}}
    assert json.loads((tmp_path / "results.json").read_text())["3c"] == {"accuracy": 0.8}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "new.txt", lambda f: f.write(b"x"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        atomic_write(path, lambda f: f.write(b"y"))  # an existing file keeps its mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_save_figure_writes_a_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, "line", tmp_path)
    assert path == tmp_path / "figures" / "line.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table():
    table = format_table([{"a": 1, "b": 0.5}, {"a": 22}], [("a", "A"), ("b", "B", "{:.1%}")])
    assert table.splitlines() == ["A   B", "--  -----", "1   50.0%", "22  -"]
