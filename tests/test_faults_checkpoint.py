"""Fault injection, checkpoints and the rest: unloadable meta, foreign files, a full disk, bad settings.

Each case is one a careless or unlucky user met (issue 10); each must fail clearly or do the right thing.
"""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import outputs
from labkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from labkit.experiment import Settings
from labkit.model import IdentityModel, SimpleMetricEmbedding
from labkit.training import PROGRESS_ENV, progress_enabled
from tests.helpers import FullDisk


def model(emb_size=8):
    torch.manual_seed(0)
    return SimpleMetricEmbedding(1, emb_size)


# meta that could not be loaded back


def test_numpy_scalars_in_meta_are_saved_as_python_numbers(tmp_path):
    save_checkpoint(model(), "m.pt", tmp_path, accuracy=np.float64(0.93), epochs=np.int64(3),
                    per_class=[np.float32(0.5)], remove_class=None)
    _, meta = load_checkpoint("m.pt", tmp_path)
    assert meta == {"accuracy": 0.93, "epochs": 3, "per_class": [0.5], "remove_class": None}
    assert type(meta["accuracy"]) is float and type(meta["epochs"]) is int


@pytest.mark.parametrize("value", [Path("data/mnist"), object(), np.arange(3)], ids=["Path", "object", "ndarray"])
def test_meta_that_cannot_be_loaded_back_is_refused_at_save(tmp_path, value):
    save_checkpoint(model(), "m.pt", tmp_path, epochs=1)
    before = (tmp_path / "m.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"not saving .*m\.pt: meta where=.*could not be loaded back"):
        save_checkpoint(model(), "m.pt", tmp_path, where=value)
    assert (tmp_path / "m.pt").read_bytes() == before  # the earlier checkpoint is untouched


# files that are not labkit checkpoints


def test_whole_module_file_is_explained_without_unsafe_advice(tmp_path):
    torch.save(model(), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("whole.pt", tmp_path)
    message = str(info.value)
    assert "torch.save(model)" in message and "save_checkpoint" in message
    assert "weights_only=False" not in message and "truncated or corrupted" not in message


def labkit_dict(**changes):
    ckpt = {"format": "labkit.checkpoint", "version": 1, "model": "SimpleMetricEmbedding",
            "config": {"input_channels": 1, "emb_size": 8}, "state_dict": model().state_dict(), "meta": {}}
    ckpt.update(changes)
    return {k: v for k, v in ckpt.items() if v != "drop"}


@pytest.mark.parametrize("changes, wording", [
    ({"config": "drop"}, "its 'config' is None"),
    ({"config": {"emb_size": 8}}, "not a dict with int input_channels and emb_size"),
    ({"state_dict": "drop"}, "its 'state_dict' is missing"),
    ({"state_dict": {"net.0.0.weight": 3}}, "not a dict of tensors"),
    ({"meta": None}, "its 'meta' is NoneType, not a dict"),
    ({"config": {"input_channels": 1, "emb_size": 0}}, "do not fit SimpleMetricEmbedding"),
], ids=["no config", "config without input_channels", "no state_dict", "state_dict of ints", "meta None", "emb_size 0"])
def test_incomplete_checkpoint_dicts_give_checkpoint_errors(tmp_path, changes, wording):
    torch.save(labkit_dict(**changes), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=wording):
        load_checkpoint("m.pt", tmp_path)


# non-finite weights


def test_nan_weights_are_refused_at_save_and_at_load(tmp_path):
    save_checkpoint(model(), "m.pt", tmp_path)
    before = (tmp_path / "m.pt").read_bytes()
    diverged = model()
    with torch.no_grad():
        diverged.net[0][2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saving .*: the weights net\.0\.2\.weight hold NaN or inf"):
        save_checkpoint(diverged, "m.pt", tmp_path)
    assert (tmp_path / "m.pt").read_bytes() == before
    state = diverged.state_dict()
    torch.save(labkit_dict(state_dict=state), tmp_path / "old-nan.pt")  # made before this check existed
    with pytest.raises(CheckpointError, match="weights with NaN or inf"):
        load_checkpoint("old-nan.pt", tmp_path)


# a full disk


@pytest.fixture
def full_disk(monkeypatch):
    """Every file written through labkit.outputs fails as on a full disk."""
    monkeypatch.setattr(outputs, "_open_fd", FullDisk)


def test_full_disk_says_so_and_keeps_the_earlier_checkpoint(tmp_path, full_disk):
    path = tmp_path / "m.pt"
    path.write_bytes(b"earlier file")
    with pytest.raises(OSError, match=r"the disk is full.*m\.pt could not be written and is unchanged") as info:
        save_checkpoint(model(), "m.pt", tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"earlier file" and sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_full_disk_while_recording_a_result(tmp_path, full_disk):
    with pytest.raises(OSError, match=r"the disk is full.*results\.json"):
        outputs.record_result("3b", tmp_path, accuracy=0.9)
    assert not (tmp_path / "results.json").exists()


# devices, settings, progress, model arguments and image types


@pytest.mark.parametrize("device, wording", [("gpu", "unknown device 'gpu'"), ("cuda:7", "no CUDA GPU|cuda:7")])
def test_load_checkpoint_checks_the_device(tmp_path, device, wording):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the missing-GPU message cannot be shown")
    save_checkpoint(model(), "m.pt", tmp_path)
    with pytest.raises(ValueError, match=wording):
        load_checkpoint("m.pt", tmp_path, device=device)


@pytest.mark.parametrize("kwargs, wording", [
    ({"epochs": 0}, "epochs must be a positive int"), ({"epochs": 2.5}, "epochs must be a positive int"),
    ({"batch_size": -1}, "batch_size must be a positive int"), ({"emb_size": True}, "emb_size must be"),
    ({"lr": 0}, "learning rate must be a positive number"), ({"lr": float("nan")}, "learning rate"),
    ({"seed": -3}, "seed must be an int"), ({"remove_class": 10}, r"remove_class=10.*0\.\.9"),
    ({"remove_class": 3.0}, r"remove_class=3\.0"),
    ({"fast": "yes"}, "fast must be True or False"),
])
def test_bad_settings_are_refused_at_construction(kwargs, wording):
    with pytest.raises(ValueError, match=wording):
        Settings(**kwargs)


def test_progress_variable_with_an_unknown_value_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "maybe")
    with pytest.raises(ValueError, match=r"LABKIT_PROGRESS='maybe' is not understood; use one of 1, true.*off"):
        progress_enabled()
    monkeypatch.setenv(PROGRESS_ENV, "Off")
    assert progress_enabled() is False


@pytest.mark.parametrize("emb_size", [True, 2.0, "32"])
def test_emb_size_must_be_a_positive_int(emb_size):
    with pytest.raises(ValueError, match="emb_size must be a positive int"):
        SimpleMetricEmbedding(1, emb_size)


def test_uint8_and_float64_images_give_the_features_of_float32_images():
    net = model().eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    expected = net.get_features(images.float() / 255)
    assert torch.allclose(net.get_features(images), expected)
    assert torch.allclose(net.get_features(images.double() / 255), expected)
    assert torch.equal(IdentityModel().get_features(images), (images.float() / 255).flatten(1))
    with pytest.raises(TypeError, match="expected float images in \\[0, 1\\] \\(or uint8 0..255\\), got torch.int64"):
        net.get_features(images.long())
