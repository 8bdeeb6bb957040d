"""Compiled CPU kernels for ``labkit.fastops``: built from ``native.c`` on first use, cached, loaded.

``kernels()`` is the loaded library, or None where it cannot be had: no C compiler, a compiler
without OpenMP, a failed build, ``LABKIT_NATIVE=0`` in the environment, or inside ``disabled()``.
``fastops`` then runs its PyTorch code, which computes the same thing more slowly, so nothing ever
depends on a compiler being there. The build (gcc or clang, ``-O3 -march=native -fopenmp``, about
a second; ``$LABKIT_CFLAGS`` adds flags) goes to ``$LABKIT_CACHE/native`` (default
``~/.cache/labkit/native``) under a name made from the source, the compiler, its flags and the
CPU's features, so a changed source or a different CPU builds
afresh, and concurrent first uses (a grader's parallel runs) each write their own file and rename it.

The kernels run on the OpenMP threads of the ``libgomp`` PyTorch already loaded (the library names
the same ``libgomp.so.1``), as many as ``torch.get_num_threads()``.
"""
import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]

_state = {"lib": None, "tried": False, "error": None, "disabled": 0}


class Geometry(ctypes.Structure):
    """The image's block + pool shapes, as ``native.c`` reads them."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "n", "h", "w", "c", "kh", "kw", "ph", "pw", "hc", "wc",
        "pkh", "pkw", "psh", "psw", "pph", "ppw", "pdh", "pdw", "hp", "wp")]


def kernels():
    """The compiled kernels (a ``ctypes.CDLL``), or None where there are none (see the module's docstring)."""
    if _state["disabled"] or os.environ.get("LABKIT_NATIVE", "1") == "0":
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["lib"] = _load(_build())
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["error"] = f"{type(err).__name__}: {err}"
    return _state["lib"]


def why_not():
    """Why ``kernels()`` is None (a line for a benchmark or a bug report), or None when it is not."""
    if _state["disabled"]:
        return "disabled by labkit.native.disabled()"
    if os.environ.get("LABKIT_NATIVE", "1") == "0":
        return "disabled by LABKIT_NATIVE=0"
    return None if kernels() is not None else _state["error"]


@contextlib.contextmanager
def disabled():
    """Inside the block, ``kernels()`` is None: fastops runs its PyTorch code (tests compare the two)."""
    _state["disabled"] += 1
    try:
        yield
    finally:
        _state["disabled"] -= 1


def _compiler():
    for name in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no C compiler (gcc, cc or clang) on PATH, so fastops runs its PyTorch code; for the "
                       "compiled kernels install gcc (Debian/Ubuntu: apt install gcc; macOS: brew install gcc, "
                       "then CC=gcc-14 or the version installed)")


def _cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _flags():
    """FLAGS, then ``$LABKIT_CFLAGS`` (e.g. ``-march=x86-64-v3`` to build for AVX2 CPUs: the last -march wins)."""
    return FLAGS + os.environ.get("LABKIT_CFLAGS", "").split()


def _build():
    """The path of the compiled library, built now unless a build for this source, compiler and CPU exists."""
    compiler, flags = _compiler(), _flags()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                     _cpu_features().encode(), platform.machine().encode()])).hexdigest()[:16]
    folder = Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit") / "native"
    target = folder / f"labkit_native_{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        run = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                             timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"{Path(compiler).name} could not build {SOURCE.name}: {run.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(path):
    lib = ctypes.CDLL(str(path))
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    geometry = ctypes.POINTER(Geometry)
    signatures = {
        "block_pool_forward": [geometry, p, p, p, p, p, i],
        "block_pool_backward": [geometry, i, p, p, p, p, p, i],
        "norm_relu_forward": [i, i, i, i, p, p, p, f, p, p, p, i],
        "norm_relu_backward": [i, i, i, i, p, p, p, p, p, p, p, p, p, i],
        "max_pool_forward": [geometry, p, p, p, i],
        "max_pool_backward": [geometry, p, p, p, i],
        "conv3x3_forward": [i, i, i, p, p, p, p, i, i],
        "conv3x3_weight": [p, p, i, i],
        "conv3x3_weight_grad": [i, i, i, p, p, p, i],
    }
    for name, args in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    lib.vector_floats.argtypes, lib.vector_floats.restype = [], ctypes.c_int
    return lib


def call(name, *args):
    """Run kernel ``name`` on ``args`` and ``torch.get_num_threads()`` threads. Tensors go in as the
    addresses of their data (they must be contiguous float32 or uint8 CPU tensors) and stay referenced
    here until the kernel returns; None goes in as a null pointer (a missing bias)."""
    converted = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.device.type != "cpu" or not arg.is_contiguous() or arg.dtype not in (torch.float32, torch.uint8):
                raise ValueError(f"{name}: native kernels take contiguous float32/uint8 CPU tensors, "
                                 f"got {arg.dtype} on {arg.device} (contiguous: {arg.is_contiguous()})")
            arg = arg.data_ptr()
        converted.append(arg)
    lib = _state["lib"] or kernels()  # loaded: a backward pass finishes on the kernels its forward used
    if lib is None:
        raise RuntimeError(f"{name}: the compiled kernels are not available ({why_not()})")
    getattr(lib, name)(*converted, torch.get_num_threads())
