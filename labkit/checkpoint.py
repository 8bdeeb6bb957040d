"""Saving and loading trained embeddings: the weights plus what rebuilds and checks the model.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "labkit.checkpoint", "version": 1, "model": "SimpleMetricEmbedding",
     "config": {"input_channels": 1, "emb_size": 32}, "state_dict": {...},
     "meta": {"remove_class": None, "epochs": 3, "accuracy": 0.97, ...}}

Saving is atomic: the file is written beside its target and renamed over it only when complete,
so a crash mid-save leaves any earlier checkpoint intact. Relative names resolve against the
checkpoint folder: the ``folder`` argument, else ``$LABKIT_CHECKPOINTS``, else ``./checkpoints``.
"""
import os
from pathlib import Path

import torch

from labkit.model import SimpleMetricEmbedding
from labkit.outputs import atomic_write

FORMAT, VERSION = "labkit.checkpoint", 1
FOLDER_ENV = "LABKIT_CHECKPOINTS"
DEFAULT_FOLDER = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable, or does not match the model asked for."""


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
    ckpt = {
        "format": FORMAT, "version": VERSION, "model": type(model).__name__,
        "config": {"input_channels": model.input_channels, "emb_size": model.emb_size},
        "state_dict": state, "meta": dict(meta),
    }
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(name, folder=None, device="cpu", emb_size=None, remove_class="any"):
    """Rebuild the model from a checkpoint; returns (model in eval mode, meta dict).

    ``emb_size`` and ``remove_class`` (None for "trained on all digits"), when given, must match
    what the checkpoint was trained with, else ``CheckpointError``.
    """
    path = checkpoint_path(name, folder)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train the model and save it first "
                              f"(notebook 03), or point {FOLDER_ENV} at the folder that holds it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}. Delete it and save it again.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a labkit checkpoint (no format tag {FORMAT!r}); "
                              f"it may be a bare state_dict: save it with labkit.checkpoint.save_checkpoint")
    if ckpt.get("version") != VERSION or ckpt.get("model") != "SimpleMetricEmbedding":
        raise CheckpointError(f"{path} holds {ckpt.get('model')!r} version {ckpt.get('version')!r}; "
                              f"this labkit reads SimpleMetricEmbedding version {VERSION}")
    config, meta = ckpt["config"], ckpt.get("meta", {})
    if emb_size is not None and config["emb_size"] != emb_size:
        raise CheckpointError(f"{path} holds a model with emb_size={config['emb_size']}, "
                              f"but emb_size={emb_size} was asked for")
    if remove_class != "any" and meta.get("remove_class") != remove_class:
        raise CheckpointError(f"{path} was trained with remove_class={meta.get('remove_class')!r}, "
                              f"but remove_class={remove_class!r} was asked for")
    model = SimpleMetricEmbedding(config["input_channels"], config["emb_size"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit SimpleMetricEmbedding{tuple(config.values())}: "
                              f"{exc}") from exc
    return model.to(device).eval(), meta
