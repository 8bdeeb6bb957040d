import pytest
import torch
from torch import nn

from labkit import device as labdevice
from labkit.device import bf16_fast, mixed_precision, pick_device
from labkit.model import SimpleMetricEmbedding


def dtypes_seen(model, run):
    """The output dtype of every leaf module of ``model`` while ``run()`` runs, in call order."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, o.dtype)))
             for m in model.modules() if not list(m.children())]
    try:
        result = run()
    finally:
        for h in hooks:
            h.remove()
    return seen, result


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has native bf16 (bf16 still works, emulated, where it has not)."""
    monkeypatch.setattr(labdevice, "bf16_fast", lambda device: True)


def test_convolutions_run_in_bf16_everything_else_in_float32(native_bf16):
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 8)
    x = torch.rand(6, 1, 28, 28)
    with mixed_precision(model, "cpu"):
        seen, loss = dtypes_seen(model, lambda: model.loss(*x.chunk(3)))
    convs = [dt for name, dt in seen if name == "Conv2d"]
    others = [dt for name, dt in seen if name not in ("Conv2d", "ReLU")]
    assert convs == [torch.bfloat16] * 3
    assert set(others) == {torch.float32}  # GroupNorm, both pools, so the features are float32
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    # the loss is close to the float32 one
    assert loss.item() == pytest.approx(model.loss(*x.chunk(3)).item(), abs=0.02)


def test_hooks_are_removed_on_exit_even_after_an_error(native_bf16):
    model = SimpleMetricEmbedding(1, 8)
    with pytest.raises(ValueError):
        with mixed_precision(model, "cpu"):
            assert any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
            model.get_features(torch.rand(2, 28, 28))  # wrong shape
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    seen, _ = dtypes_seen(model, lambda: model.get_features(torch.rand(2, 1, 28, 28)))
    assert {dt for _, dt in seen} == {torch.float32}


@pytest.mark.parametrize("enabled, native", [(False, True), (True, False)])
def test_float32_when_disabled_or_not_native(monkeypatch, enabled, native):
    monkeypatch.setattr(labdevice, "bf16_fast", lambda device: native)
    model = SimpleMetricEmbedding(1, 8)
    with mixed_precision(model, "cpu", enabled):
        seen, _ = dtypes_seen(model, lambda: model.get_features(torch.rand(2, 1, 28, 28)))
    assert {dt for _, dt in seen} == {torch.float32}


def test_bf16_fast_answers_for_every_device_type():
    assert isinstance(bf16_fast("cpu"), bool)
    assert bf16_fast("meta") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_is_explained():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")


def test_training_with_mixed_precision_learns(native_bf16):
    from labkit.loaders import triplet_loader
    from labkit.training import train
    from tests.helpers import tiny_dataset

    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = triplet_loader(tiny_dataset(per_class=(20,) * 10), 16, seed=0)
    losses = [train(model, optimizer, batches, progress=False, log=False) for _ in range(4)]
    assert losses[-1] < losses[0]
    assert all(isinstance(m, nn.Module) and not m._forward_hooks for m in model.modules())
