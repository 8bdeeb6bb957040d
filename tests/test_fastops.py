import copy

import pytest
import torch
from torch import nn

from labkit import device as labdevice
from labkit import native, training
from labkit.device import mixed_precision, prepare_model
from labkit.fastops import fast_layers
from labkit.model import SimpleMetricEmbedding
from tests.helpers import require_kernels, spy_on_kernels


@pytest.fixture(params=["native", "torch"])
def kernels(request, monkeypatch):
    """A test that takes this runs twice: on the compiled kernels (``labkit.native``) and on fastops'
    PyTorch code. It gets the list of the compiled kernels called, to check the path it meant to test."""
    if request.param == "torch":
        with native.disabled():
            called = spy_on_kernels(monkeypatch)
            yield called
        assert called == []
        return
    require_kernels()
    yield spy_on_kernels(monkeypatch)


def loss_and_grads(model, images, fast, amp=False):
    """The triplet loss of ``images`` (split in three) and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    with fast_layers(model, fast), mixed_precision(model, "cpu", amp):
        loss = model.loss(*images.chunk(3))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_close_grads(fast, plain, rtol, atol_scale):
    assert fast.keys() == plain.keys()
    # absolute tolerance from the largest gradient: some (the last bias) are zero up to rounding
    scale = max(g.abs().max().item() for g in plain.values())
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=rtol, atol=atol_scale * scale, msg=name)


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x[: n // 2, :, :6] = 0.0  # constant regions: ties in every max-pool window there
    return x


@pytest.mark.parametrize("channels_last", [True, False])
def test_loss_and_gradients_equal_autograd_in_float32(channels_last, kernels):
    torch.manual_seed(0)
    model = SimpleMetricEmbedding(1, 32)
    model = prepare_model(model, "cpu") if channels_last else model
    x = images()
    plain_loss, plain = loss_and_grads(model, x, fast=False)
    assert kernels == []  # fast=False runs plain autograd only
    fast_loss, fast = loss_and_grads(model, x, fast=True)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert_close_grads(fast, plain, rtol=1e-4, atol_scale=1e-5)
    if channels_last and native.kernels() is not None:
        assert sorted(set(kernels)) == ["block_pool_backward", "block_pool_forward", "conv3x3_forward",
                                        "conv3x3_weight", "conv3x3_weight_grad", "max_pool_backward",
                                        "max_pool_forward", "norm_relu_backward", "norm_relu_forward"]


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has native bf16 (bf16 still works, emulated, where it has not)."""
    monkeypatch.setattr(labdevice, "bf16_fast", lambda device: True)


def test_loss_and_gradients_equal_autograd_with_bf16_convolutions(native_bf16, kernels):
    torch.manual_seed(0)
    model = prepare_model(SimpleMetricEmbedding(1, 32), "cpu")
    x = images()
    plain_loss, plain = loss_and_grads(model, x, fast=False, amp=True)
    fast_loss, fast = loss_and_grads(model, x, fast=True, amp=True)
    exact_loss, exact = loss_and_grads(model, x, fast=False, amp=False)
    # bf16 rounding (8 bits of mantissa) makes both differ from float32 by about 1 %; the fast path
    # must be as close to the plain bf16 run as the plain run is to float32
    torch.testing.assert_close(fast_loss, plain_loss, rtol=2e-2, atol=1e-3)
    for name in exact:
        off_plain = (plain[name] - exact[name]).norm() / exact[name].norm()
        off_fast = (fast[name] - exact[name]).norm() / exact[name].norm()
        assert off_fast <= 2 * off_plain + 1e-2, (name, off_fast.item(), off_plain.item())
    # with the compiled kernels the image's block and its pool run in float32 under autocast too;
    # the 32 -> 32 convolutions stay with oneDNN's bf16 ones
    assert ("block_pool_forward" in kernels) == (native.kernels() is not None)
    assert "conv3x3_forward" not in kernels


def test_training_through_the_fast_path_equals_plain_autograd(monkeypatch, kernels):
    from labkit.loaders import TripletBatches

    class Tiny:  # a dataset as TripletBatches reads it
        images = images(120, seed=1).squeeze(1)
        targets = torch.arange(120) % 4
        classes = [0, 1, 2, 3]

    def run(fast, dtype=torch.float32):
        torch.manual_seed(0)
        model = prepare_model(SimpleMetricEmbedding(1, 16), "cpu").to(dtype)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if not fast:
            monkeypatch.setattr(training, "fast_layers", lambda model: fast_layers(model, enabled=False))
        loss = training.train(model, optimizer, TripletBatches(Tiny, 8, seed=0, sampler="vectorised"), amp=False, progress=False, log=False)
        monkeypatch.undo()
        with torch.no_grad():
            distances = torch.cdist(*[model.get_features(images(10, seed=2))] * 2)
        return loss, {k: v.double() for k, v in model.state_dict().items()}, distances.double()

    # Both float32 runs are compared with plain autograd in float64. Adam divides each step by the
    # gradient's own size, so where a gradient is near zero, rounding (the fast path sums the first
    # block's gradients in another order than oneDNN) can swing a step by up to lr: the weights may
    # differ from the exact run by a small share of one step, lr = 1e-3, and no more.
    exact_loss, exact, exact_distances = run(False, torch.float64)
    fast_loss, fast, fast_distances = run(True)
    assert fast_loss == pytest.approx(exact_loss, rel=1e-4)
    torch.testing.assert_close(fast_distances, exact_distances, rtol=1e-3, atol=1e-5)
    # The last convolution's bias moves every embedding alike, so no distance and no loss depends on
    # it: its gradient is zero up to rounding, which Adam scales up to steps of lr in every run.
    del exact["net.4.2.bias"]
    for name in exact:
        torch.testing.assert_close(fast[name], exact[name], rtol=1e-3, atol=0.05 * 1e-3, msg=name)


def test_modules_are_restored_and_untouched():
    model = prepare_model(SimpleMetricEmbedding(1, 8), "cpu")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="inside"):
        with fast_layers(model):
            assert any("forward" in vars(m) for m in model.modules())
            raise RuntimeError("an error inside the block")
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.net[0]).__name__ == "_BNReluConv"


def test_layers_it_does_not_handle_run_the_plain_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GroupNorm(1, 3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),  # 3 input channels
                          nn.GroupNorm(2, 4), nn.Tanh(), nn.Conv2d(4, 1, 3), nn.ReLU(),  # no GroupNorm + ReLU pair
                          nn.Conv2d(1, 2, 3, stride=2))  # one input channel, but strided
    x = torch.rand(4, 3, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    with fast_layers(model):
        patched = [m for m in model.modules() if "forward" in vars(m)]
        out = model(x)
    assert patched == [model]  # only the Sequential holding the first GroupNorm + ReLU pair
    out.sum().backward()
    fast = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    model(x).sum().backward()
    for a, b in zip(fast, [p.grad for p in model.parameters()] + [x.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_single_channel_convolution_with_input_gradient():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 5, (3, 5), padding=(2, 1), bias=False)
    x = torch.randn(3, 1, 9, 11, requires_grad=True)
    with fast_layers(conv):
        out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    fast = conv.weight.grad.clone(), x.grad.clone()
    conv.weight.grad, x.grad = None, None
    plain_out = conv(x)
    plain_out.backward(grad)
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[0], conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast[1], x.grad, rtol=1e-4, atol=1e-5)


def test_user_hooks_switch_the_fusion_off():
    model = prepare_model(SimpleMetricEmbedding(1, 8), "cpu")
    seen = []
    model.net[2][0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with fast_layers(model):
        model.get_features(torch.rand(2, 1, 28, 28))
    assert seen == [torch.Size([2, 8, 13, 13])]  # the hooked GroupNorm ran as itself


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2), nn.MaxPool2d(2, padding=1, ceil_mode=True), nn.MaxPool2d(3, 1, dilation=2)])
@pytest.mark.parametrize("channels", [16, 6])  # whole vectors of 16 for the compiled kernels; 6 runs the PyTorch code
def test_image_block_and_pool_in_chunks_equal_autograd(pool, channels, monkeypatch, kernels):
    from labkit import fastops

    monkeypatch.setattr(fastops, "CHUNK", 4)  # 10 images: chunks of 4, 4 and 2 (on the PyTorch code)
    torch.manual_seed(0)
    block = nn.Sequential(nn.GroupNorm(1, 1), nn.ReLU(), nn.Conv2d(1, channels, 3, padding=1))
    with torch.no_grad():
        block[0].weight.fill_(1.3), block[0].bias.fill_(0.2)
    net = prepare_model(nn.Sequential(block, pool, nn.Flatten()), "cpu")
    x = images(10).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(net(x))
    calls = []
    apply = fastops._FirstBlockPool.apply
    monkeypatch.setattr(fastops._FirstBlockPool, "apply", staticmethod(lambda *a: calls.append(1) or apply(*a)))
    with fast_layers(net):
        out = net(x)
    out.backward(grad)
    assert calls == [1]  # the block and its pool ran as one, chunk by chunk
    fast = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    plain = net(x)
    plain.backward(grad)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast, [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    compiled = channels % 16 == 0 and native.kernels() is not None
    assert kernels == (["block_pool_forward", "block_pool_backward"] if compiled else [])


def test_image_block_and_pool_keep_channels_last():
    model = prepare_model(SimpleMetricEmbedding(1, 8), "cpu")
    x = images(6)
    with fast_layers(model):
        assert "forward" in vars(model.net)  # the block + pool pair is found in the network
        out = model.net[:2](x)  # the slice is a new Sequential: found there too
    assert out.shape == (6, 8, 13, 13) and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_groupnorm_relu_gradients_match_float64_even_far_from_zero(offset, kernels):
    """The fused backward sums over x, not x - mean: far from zero that must still be exact enough."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    block = nn.Sequential(norm, nn.ReLU())
    x0 = (torch.randn(6, 32, 13, 13) + offset).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 32, 13, 13)

    def grads(module, x):
        x = x.clone().requires_grad_()
        module.zero_grad()
        module(x).backward(grad.to(x.dtype))
        return [x.grad.double(), module[0].weight.grad.double(), module[0].bias.grad.double()]

    with fast_layers(block):
        assert "forward" in vars(block)
        fast = grads(block, x0)
    exact = grads(copy.deepcopy(block).double(), x0.double())
    for name, a, b in zip(("input", "weight", "bias"), fast, exact):
        assert ((a - b).norm() / b.norm()).item() < 1e-5, name
    assert kernels == (["norm_relu_forward", "norm_relu_backward"] if native.kernels() is not None else [])


def test_inference_through_the_fast_path_equals_plain_and_ignores_the_batch_size(kernels):
    """Class means and evaluation run through fast_layers: the same features, whatever the batch size."""
    torch.manual_seed(0)
    model = prepare_model(SimpleMetricEmbedding(1, 32), "cpu").eval()
    x = images(40)
    with torch.inference_mode():
        plain = model.get_features(x)
        with fast_layers(model):
            whole = model.get_features(x)
            pieces = torch.cat([model.get_features(part) for part in x.split(7)])
    torch.testing.assert_close(whole, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(whole, pieces)
    compiled = native.kernels() is not None
    assert sorted(set(kernels)) == (["block_pool_forward", "conv3x3_forward", "conv3x3_weight", "max_pool_forward",
                                     "norm_relu_forward"] if compiled else [])
