"""Saving and loading trained embeddings: the weights plus what rebuilds and checks the model.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "labkit.checkpoint", "version": 1, "model": "SimpleMetricEmbedding",
     "config": {"input_channels": 1, "emb_size": 32}, "state_dict": {...},
     "meta": {"remove_class": None, "epochs": 3, "accuracy": 0.97, ...}}

Saving is atomic: the file is written beside its target and renamed over it only when complete,
so a crash mid-save (or a full disk) leaves any earlier checkpoint intact. Saving refuses weights
that are not finite (a diverged training) and meta that ``weights_only`` loading could not read back
(numpy scalars become Python numbers; anything else must be a plain value). Relative names resolve
against the checkpoint folder: the ``folder`` argument, else ``$LABKIT_CHECKPOINTS``, else ``./checkpoints``.
"""
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from labkit.device import pick_device
from labkit.model import SimpleMetricEmbedding
from labkit.outputs import atomic_write

FORMAT, VERSION = "labkit.checkpoint", 1
FOLDER_ENV = "LABKIT_CHECKPOINTS"
DEFAULT_FOLDER = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved, or a file that is missing, unreadable, or not the model asked for."""


def checkpoint_path(name, folder=None):
    path = Path(name)
    if path.is_absolute():
        return path
    return Path(folder if folder is not None else os.environ.get(FOLDER_ENV, DEFAULT_FOLDER)) / path


def save_checkpoint(model, name, folder=None, **meta):
    """Write ``model`` (a SimpleMetricEmbedding) and ``meta`` atomically; returns the path written."""
    if not isinstance(model, SimpleMetricEmbedding):
        raise TypeError(f"save_checkpoint stores SimpleMetricEmbedding models, got {type(model).__name__}")
    path = checkpoint_path(name, folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"not saving {path}: the weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                              f"hold NaN or inf (the training diverged). Find the cause (non-finite images, "
                              f"too high a learning rate), then train a fresh model; any earlier file is kept")
    ckpt = {
        "format": FORMAT, "version": VERSION, "model": type(model).__name__,
        "config": {"input_channels": model.input_channels, "emb_size": model.emb_size},
        "state_dict": state, "meta": _loadable_meta(meta, path),
    }
    buffer = io.BytesIO()  # serialised whole in memory first: a write error is then a plain OSError
    torch.save(ckpt, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def _plain(value):
    """numpy scalars and 0-d arrays as the Python numbers they hold; containers converted inside."""
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _loadable_meta(meta, path):
    """``meta`` with numpy scalars converted; CheckpointError for any entry weights_only loading refuses."""
    meta = _plain(dict(meta))
    for key, value in meta.items():
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"not saving {path}: meta {key}={value!r} is a {type(value).__module__}.{type(value).__name__}, "
                f"which could not be loaded back safely. Pass plain values (None, bool, int, float, str, "
                f"lists, dicts, tensors), e.g. {key}=str(...) or {key}=float(...)") from None
    return meta


def load_checkpoint(name, folder=None, device="cpu", emb_size=None, remove_class="any"):
    """Rebuild the model from a checkpoint; returns (model in eval mode, meta dict).

    ``emb_size`` and ``remove_class`` (None for "trained on all digits"), when given, must match
    what the checkpoint was trained with, else ``CheckpointError``.
    """
    device = pick_device(device)  # a bad device is named before anything is read
    path = checkpoint_path(name, folder)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train the model and save it first "
                              f"(notebook 03), or point {FOLDER_ENV} at the folder that holds it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not (zipfile.is_zipfile(path) and "GLOBAL" in str(exc)):  # torch's files are zip archives
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?). "
                                  f"Delete it and save it again.") from None
        raise CheckpointError(
            f"{path} holds Python objects that labkit does not unpickle (loading them could run code "
            f"from the file), such as a whole model saved with torch.save(model) or meta with numpy or "
            f"Path values. labkit loads only files written by labkit.checkpoint.save_checkpoint: save the "
            f"model with save_checkpoint(model, name). Details: {str(exc).splitlines()[-1][:200]}") from None
    except Exception as exc:  # noqa: BLE001 - torch reports damage in many types
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}. Delete it and save it again.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a labkit checkpoint (no format tag {FORMAT!r}); "
                              f"it may be a bare state_dict: save it with labkit.checkpoint.save_checkpoint")
    if ckpt.get("version") != VERSION or ckpt.get("model") != "SimpleMetricEmbedding":
        raise CheckpointError(f"{path} holds {ckpt.get('model')!r} version {ckpt.get('version')!r}; "
                              f"this labkit reads SimpleMetricEmbedding version {VERSION}")
    config, state, meta = ckpt.get("config"), ckpt.get("state_dict"), ckpt.get("meta", {})
    if not (isinstance(config, dict) and all(isinstance(config.get(k), int) for k in ("input_channels", "emb_size"))):
        raise CheckpointError(f"{path} is damaged: its 'config' is {config!r}, not a dict with int "
                              f"input_channels and emb_size. Delete it and save the model again")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{path} is damaged: its 'state_dict' is missing or not a dict of tensors. "
                              f"Delete it and save the model again")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is damaged: its 'meta' is {type(meta).__name__}, not a dict. "
                              f"Delete it and save the model again")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        raise CheckpointError(f"{path} holds weights with NaN or inf (a diverged training); "
                              f"delete it and train again")
    if emb_size is not None and config["emb_size"] != emb_size:
        raise CheckpointError(f"{path} holds a model with emb_size={config['emb_size']}, "
                              f"but emb_size={emb_size} was asked for")
    if remove_class != "any" and meta.get("remove_class") != remove_class:
        raise CheckpointError(f"{path} was trained with remove_class={meta.get('remove_class')!r}, "
                              f"but remove_class={remove_class!r} was asked for")
    try:
        model = SimpleMetricEmbedding(config["input_channels"], config["emb_size"])
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit SimpleMetricEmbedding{tuple(config.values())}: "
                              f"{exc}") from exc
    return model.to(device).eval(), meta
