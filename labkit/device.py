"""Where to compute: picking CPU or CUDA, and the per-device settings that make this model fast."""
import contextlib
import os

import torch

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


def prepare_model(model, device=None):
    """Move the model to the device in channels_last layout: about twice as fast for these convolutions."""
    return model.to(pick_device(device), memory_format=torch.channels_last)


def autocast(device, enabled=True):
    """bfloat16 mixed precision on CUDA; on the CPU nothing (it is not faster here)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
