import os

import pytest
import torch

from labkit import checkpoint
from labkit.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from labkit.model import IdentityModel, SimpleMetricEmbedding


def trained_like(emb_size=16, seed=0):
    torch.manual_seed(seed)
    return SimpleMetricEmbedding(1, emb_size)


def test_round_trip_restores_weights_config_and_meta(tmp_path):
    model = trained_like()
    path = save_checkpoint(model, "m.pt", tmp_path, remove_class=0, epochs=3, accuracy=0.9)
    loaded, meta = load_checkpoint("m.pt", tmp_path, emb_size=16, remove_class=0)
    assert path == tmp_path / "m.pt"
    assert meta == {"remove_class": 0, "epochs": 3, "accuracy": 0.9}
    assert loaded.emb_size == 16 and not loaded.training
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.get_features(x), model.eval().get_features(x))
    # a plain torch.load with weights_only=True reads it: no pickled code inside
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"input_channels": 1, "emb_size": 16}


def test_channels_last_model_saves_plain_weights(tmp_path):
    model = trained_like().to(memory_format=torch.channels_last)
    save_checkpoint(model, "m.pt", tmp_path)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(t.is_contiguous() for t in raw["state_dict"].values())


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing\.pt: train the model"):
        load_checkpoint("nothing.pt", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_file_is_reported_not_crashed_on(tmp_path, damage):
    path = save_checkpoint(trained_like(), "m.pt", tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a zip" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"m\.pt is not a readable checkpoint"):
        load_checkpoint("m.pt", tmp_path)


def test_bare_state_dict_is_not_taken_for_a_checkpoint(tmp_path):
    torch.save(trained_like().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a labkit checkpoint"):
        load_checkpoint("bare.pt", tmp_path)


def test_mismatches_are_named(tmp_path):
    save_checkpoint(trained_like(16), "m.pt", tmp_path, remove_class=None)
    with pytest.raises(CheckpointError, match=r"emb_size=16, but emb_size=32 was asked for"):
        load_checkpoint("m.pt", tmp_path, emb_size=32)
    with pytest.raises(CheckpointError, match=r"remove_class=None, but remove_class=0"):
        load_checkpoint("m.pt", tmp_path, remove_class=0)


def test_weights_that_do_not_fit_their_config(tmp_path):
    path = save_checkpoint(trained_like(16), "m.pt", tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["config"]["emb_size"] = 8
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint("m.pt", tmp_path)


def test_crash_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old = trained_like(16, seed=0)
    save_checkpoint(old, "m.pt", tmp_path, epochs=1)
    before = (tmp_path / "m.pt").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trained_like(16, seed=1), "m.pt", tmp_path, epochs=2)
    assert (tmp_path / "m.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint("m.pt", tmp_path)[1] == {"epochs": 1}


def test_paths_resolve_against_the_configured_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert checkpoint_path("a.pt") == tmp_path / "ckpts" / "a.pt"
    assert checkpoint_path("a.pt", tmp_path) == tmp_path / "a.pt"
    assert checkpoint_path(tmp_path / "b.pt", "elsewhere") == tmp_path / "b.pt"
    save_checkpoint(trained_like(), "sub/a.pt")
    assert (tmp_path / "ckpts" / "sub" / "a.pt").is_file()


def test_only_embedding_models_are_saved(tmp_path):
    with pytest.raises(TypeError, match="SimpleMetricEmbedding"):
        save_checkpoint(IdentityModel(), "i.pt", tmp_path)
