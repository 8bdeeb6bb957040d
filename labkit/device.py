"""Where to compute: picking CPU or CUDA, and the per-device settings that make this model fast."""
import contextlib
import os
import platform

import torch
from torch import nn

DEVICE_ENV = "LABKIT_DEVICE"


def pick_device(device=None):
    """The argument if given, else ``$LABKIT_DEVICE``, else CUDA when available, else the CPU."""
    if device is None:
        device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this machine has no CUDA GPU; use 'cpu'")
    return device


@contextlib.contextmanager
def cpu_rng(seed):
    """torch's global CPU generator seeded with ``seed`` inside the block, its state restored on exit.

    Only the CPU's: ``torch.manual_seed`` would reseed every GPU's generators too, for good, since
    ``fork_rng(devices=[])`` restores the CPU's alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo on Linux, else what ``platform`` knows): benchmarks name it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def prepare_model(model, device=None):
    """Move the model to the device in channels_last layout: about twice as fast for these convolutions."""
    return model.to(pick_device(device), memory_format=torch.channels_last)


def bf16_fast(device):
    """Whether bfloat16 convolutions are native here: a CUDA GPU from Ampere on (compute capability
    8.0; older ones such as Colab's T4 would emulate bf16), or a CPU whose oneDNN reports bf16
    instructions (AMX or AVX512-BF16; elsewhere bf16 is emulated and slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Modules whose input is cast back to float32 (normalisation statistics need it, and the CPU's
# GroupNorm is slow on bfloat16), and modules whose output is (pools: a max of rounded values is the
# rounded max, so casting after the pool is exact and moves a quarter of the data).
_FLOAT32_IN = (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)
_FLOAT32_OUT = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@contextlib.contextmanager
def mixed_precision(model, device, enabled=True):
    """Convolutions in bfloat16, everything else in float32, where bf16 is native (``bf16_fast``).

    ``torch.autocast`` runs the convolutions in bf16; hooks, removed on exit, hand float32 to
    every normalisation layer and out of every pooling layer, so the features and the loss stay
    float32. Elsewhere, or with ``enabled=False``, nothing changes.
    """
    device = torch.device(device)
    if not (enabled and bf16_fast(device)):
        yield
        return
    handles = []
    for module in model.modules():
        if isinstance(module, _FLOAT32_IN):
            handles.append(module.register_forward_pre_hook(_inputs_to_float32))
        elif isinstance(module, _FLOAT32_OUT):
            handles.append(module.register_forward_hook(_output_to_float32))
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _inputs_to_float32(module, inputs):
    return tuple(x.float() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)


def _output_to_float32(module, inputs, output):
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def model_device(model, device=None):
    """The device to run ``model`` on: ``device`` if given (it must hold the model's parameters),
    else where the parameters are, else ``pick_device()`` for a model without parameters."""
    param = next(model.parameters(), None)
    if device is None:
        return param.device if param is not None else pick_device()
    device = pick_device(device)
    if param is not None and _same(param.device, device) is False:
        raise ValueError(f"the model is on {param.device} but device={str(device)!r} was asked for; "
                         f"move it first with model.to({str(device)!r}) or labkit.device.prepare_model")
    return device


def _same(a, b):
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index
