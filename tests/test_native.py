"""labkit.native: the compiled kernels build once, are found again, and are never required."""
import platform
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import fastops, native
from labkit.fastops import fast_layers
from tests.helpers import require_kernels, spy_on_kernels


@pytest.fixture
def compiled():
    require_kernels()


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A first use in a new cache folder: the kernels are looked for (and built) anew, then forgotten."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "error": None, "disabled": 0})
    return tmp_path


# the lab's pool and the same with stride 1 (the kernel's unrolled 3x3 path), and others (its general one)
POOLS = [nn.MaxPool2d(3, 2), nn.MaxPool2d(3, 1), nn.MaxPool2d(3, 2, ceil_mode=True),
         nn.MaxPool2d(2, padding=1, ceil_mode=True), nn.MaxPool2d(3, 1, dilation=2)]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("nan", [False, True])
def test_block_pool_kernel_picks_the_maxima_aten_picks(pool, nan, compiled):
    assert_block_pool_picks_the_maxima_aten_picks(pool, nan)


@pytest.mark.parametrize("pool", POOLS + [nn.MaxPool2d(2), nn.MaxPool2d((3, 2), (1, 2), padding=(1, 0))])
@pytest.mark.parametrize("channels", [16, 48])
def test_max_pool_equals_aten_with_ties_and_nan(pool, channels, compiled, monkeypatch):
    """A max-pool alone (the lab's second): the same output, and the same input gradient bit for bit
    (ties everywhere from small integers, NaN that must win; where windows share a maximum, the
    gradients are added in ATen's order)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (3, channels, 13, 13), generator=g).float()
    x[0, :, 4, 4] = x[2, 3, 7:9, 0] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    grad_seed = torch.randn(3, channels, 13, 13, generator=g)
    called = spy_on_kernels(monkeypatch)

    def run(fast):
        xr = x.clone().requires_grad_()
        with fast_layers(pool, fast):
            out = pool(xr)
        out.backward(grad_seed[:, :, :out.shape[2], :out.shape[3]].contiguous(memory_format=torch.channels_last))
        return out, xr.grad

    (out, grad), (ref, ref_grad) = run(True), run(False)
    assert called == ["max_pool_forward", "max_pool_backward"]
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(grad, ref_grad) and out.is_contiguous(memory_format=torch.channels_last)


def test_max_pool_runs_plain_where_the_kernel_does_not_apply(compiled, monkeypatch):
    pool = nn.MaxPool2d(3, 2)
    called = spy_on_kernels(monkeypatch)
    with fast_layers(pool):
        for x in (torch.randn(2, 32, 13, 13),  # NCHW
                  torch.randn(2, 8, 13, 13).contiguous(memory_format=torch.channels_last),  # 8 channels
                  torch.randn(2, 32, 13, 13, dtype=torch.float64).contiguous(memory_format=torch.channels_last)):
            assert torch.equal(pool(x), nn.functional.max_pool2d(x, 3, 2))
    assert called == []


def assert_block_pool_picks_the_maxima_aten_picks(pool, nan=False):
    """Small integers make the convolution exact, so its output has ties everywhere: the kernel must
    pick the same maximum (the first in scan order) as ATen, whose indices autograd follows; a NaN
    wins over numbers, and a later NaN over an earlier one, as in ATen."""
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 3, (5, 28, 28), generator=g).float()
    if nan:
        z[:, 5, 7] = z[:, 20, 3:5] = z[1, 0, 0] = float("nan")
    weight = torch.randint(-2, 3, (32, 1, 3, 3), generator=g).float()
    bias = torch.randint(-2, 3, (32,), generator=g).float()
    conv = F.conv2d(z.unsqueeze(1), weight, bias, padding=1)
    ref, ref_index = torch.ops.aten.max_pool2d_with_indices(conv, *fastops._pool_geometry(pool))
    maps = z.unsqueeze(0).expand(3, -1, -1, -1).contiguous()
    geometry = fastops._native_geometry(maps, weight, (1, 1), fastops._pool_geometry(pool))
    out = torch.empty(5, geometry.hp, geometry.wp, 32)
    index = torch.empty(out.shape, dtype=torch.uint8)
    native.call("block_pool_forward", geometry, maps[0], weight.reshape(32, 9).t().contiguous(), bias, out, index)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), ref, rtol=0, atol=0, equal_nan=True)
    assert out.isnan().any() == nan
    # the kernel keeps the maximum's place (i, j) in its window as i * kw + j; ATen the pixel
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), _ = fastops._pool_geometry(pool)
    oh = torch.arange(geometry.hp).view(-1, 1, 1)
    ow = torch.arange(geometry.wp).view(1, -1, 1)
    i, j = index.long().div(kw, rounding_mode="floor"), index.long() % kw
    pixel = (oh * sh - ph + i * dh) * geometry.wc + (ow * sw - pw + j * dw)
    assert (pixel.permute(0, 3, 1, 2) == ref_index).all()


CONV_SHAPES = [(5, 13, 13), (4, 6, 6), (3, 1, 1), (2, 2, 3), (3, 7, 4), (1, 28, 28)]


def assert_conv3x3_kernel_equals_float64(shapes=CONV_SHAPES):
    """``conv3x3_forward`` (Winograd's F(2x2, 3x3) and F(4x4, 3x3)) and ``conv3x3_weight_grad`` against
    float64's direct convolution: maps of odd and even sizes, smaller than a tile, and numbers of tiles
    that leave the last block short. Relative to the largest value, float32's direct convolution is
    off by about 2e-7 here, F(2x2, 3x3) by as much, F(4x4, 3x3) by up to 5e-6."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 32, 3, 3, generator=g) * 0.1
    for tile, tolerance in ((2, 1e-6), (4, 1e-5)):
        u = torch.empty((tile + 2) ** 2, 32, 32)
        native.call("conv3x3_weight", weight, u, tile)
        for n, h, w in shapes:
            x = torch.randn(n, h, w, 32, generator=g)
            for bias in (torch.randn(32, generator=g), None):
                out = torch.empty_like(x)
                native.call("conv3x3_forward", n, h, w, x, u, bias, out, tile)
                ref = F.conv2d(x.permute(0, 3, 1, 2).double(), weight.double(),
                               None if bias is None else bias.double(), padding=1).permute(0, 2, 3, 1)
                assert (out - ref).abs().max() < tolerance * ref.abs().max(), (tile, n, h, w, bias is None)
    for n, h, w in shapes:
        x, grad = torch.randn(n, h, w, 32, generator=g), torch.randn(n, h, w, 32, generator=g)
        grad_weight = torch.empty(32, 32, 3, 3)
        native.call("conv3x3_weight_grad", n, h, w, x, grad, grad_weight)
        exact = torch.zeros(32, 32, 3, 3, dtype=torch.float64, requires_grad=True)
        F.conv2d(x.permute(0, 3, 1, 2).double(), exact, padding=1).backward(grad.permute(0, 3, 1, 2).double())
        assert (grad_weight - exact.grad).abs().max() < 2e-6 * exact.grad.abs().max(), (n, h, w)


def test_conv3x3_kernel_equals_a_float64_convolution(compiled):
    assert_conv3x3_kernel_equals_float64()


@pytest.mark.parametrize("size, tile", [((13, 13), 4), ((28, 28), 4), ((7, 4), 4), ((6, 6), 2), ((2, 3), 2), ((1, 1), 2)])
def test_the_larger_tile_where_it_takes_fewer_products(size, tile):
    assert fastops.winograd_tile(*size) == tile


@pytest.mark.parametrize("size", [13, 6])  # F(4x4, 3x3) and F(2x2, 3x3) forward
@pytest.mark.parametrize("bias", [True, False])
def test_conv3x3_forward_and_gradients_equal_float64(bias, size, compiled, monkeypatch):
    """A 32 -> 32 'same' convolution in fast_layers runs as Winograd (its input gradient too); its
    output and the gradients of input, weight and bias are float64's to float32 rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=bias)
    x = torch.randn(7, 32, size, size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(7, 32, size, size)
    called = spy_on_kernels(monkeypatch)
    xg = x.clone().requires_grad_()
    with fast_layers(conv):
        out = conv(xg)
    out.backward(grad)
    assert called == ["conv3x3_weight", "conv3x3_forward", "conv3x3_weight", "conv3x3_forward", "conv3x3_weight_grad"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    exact = nn.Conv2d(32, 32, 3, padding=1, bias=bias).double()
    exact.load_state_dict(conv.state_dict())
    xd = x.double().requires_grad_()
    ref = exact(xd)
    ref.backward(grad.double())
    pairs = [(out, ref), (xg.grad, xd.grad), (conv.weight.grad, exact.weight.grad)]
    pairs += [(conv.bias.grad, exact.bias.grad)] if bias else []
    for a, b in pairs:
        assert ((a.double() - b).norm() / b.norm()).item() < 3e-6  # F(4x4, 3x3) on 13x13 maps: about 1e-6


@pytest.mark.parametrize("conv", [nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.Conv2d(32, 32, 3, padding=0), nn.Conv2d(32, 32, 5, padding=2),
                                  nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect")])
def test_other_convolutions_run_as_the_plain_module(conv, compiled, monkeypatch):
    x = torch.randn(2, conv.in_channels, 9, 9).contiguous(memory_format=torch.channels_last)
    called = spy_on_kernels(monkeypatch)
    with fast_layers(conv):
        out = conv(x)
    assert called == [] and torch.equal(out, conv(x))


def test_conv3x3_runs_plain_on_nchw_maps_and_other_dtypes(compiled, monkeypatch):
    conv = nn.Conv2d(32, 32, 3, padding=1)
    called = spy_on_kernels(monkeypatch)
    with fast_layers(conv):
        nchw = conv(torch.randn(2, 32, 5, 5))
        double = conv.double()(torch.randn(2, 32, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last))
    assert called == [] and nchw.dtype == torch.float32 and double.dtype == torch.float64


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_conv3x3_in_inference_equals_float64_whatever_the_batch(mode, compiled, monkeypatch):
    """Class means and evaluation: Winograd's forward pass, no autograd node, each image's output
    independent of the others in the batch."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(5, 32, 13, 13).contiguous(memory_format=torch.channels_last)
    called = spy_on_kernels(monkeypatch)
    with fast_layers(conv), mode():
        out = conv(x)
        pieces = torch.cat([conv(part) for part in x.split(2)])
    assert called[:2] == ["conv3x3_weight", "conv3x3_forward"] and set(called) == {"conv3x3_weight", "conv3x3_forward"}
    assert out.grad_fn is None and torch.equal(out, pieces)
    exact = conv.double()(x.double()).detach()
    assert ((out.double() - exact).norm() / exact.norm()).item() < 3e-6


@pytest.mark.parametrize("flags", ["-march=x86-64-v3", "-march=x86-64"])
def test_builds_for_narrower_vectors_compute_the_same(flags, fresh, monkeypatch):
    """Without AVX-512 the kernels use 8 (AVX2) or 4 (SSE) floats per vector: the same results."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"{flags} is for x86-64 CPUs, this is {platform.machine()}")
    monkeypatch.setenv("LABKIT_CFLAGS", flags)
    if native.kernels() is None:
        pytest.skip(f"no build with {flags}: {native.why_not()}")
    for pool in POOLS:
        assert_block_pool_picks_the_maxima_aten_picks(pool)
    assert_conv3x3_kernel_equals_float64()
    # with SSE's 4 floats per vector the Winograd convolution is slower than oneDNN's: not used
    assert fastops._winograd_ready() == (flags != "-march=x86-64")
    torch.manual_seed(0)
    block = nn.Sequential(nn.GroupNorm(8, 32), nn.ReLU())
    with torch.no_grad():
        block[0].weight.normal_(), block[0].bias.normal_()
    x = torch.randn(3, 32, 7, 7).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 32, 7, 7)

    def run(fast):
        xg = x.clone().requires_grad_()
        block.zero_grad()
        with fast_layers(block, fast):
            out = block(xg)
        out.backward(grad)
        return [out, xg.grad, block[0].weight.grad, block[0].bias.grad]

    called = spy_on_kernels(monkeypatch)
    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert called == ["norm_relu_forward", "norm_relu_backward"]


def test_the_build_is_cached_and_reused(fresh, compiled, monkeypatch):
    assert native.kernels() is not None
    built = list((fresh / "native").glob("*.so"))
    assert len(built) == 1 and not list((fresh / "native").glob("tmp*"))  # the temporary file was renamed
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "error": None, "disabled": 0})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert native.kernels() is not None  # a second process finds the first one's build


def test_extra_flags_make_another_build(fresh, compiled, monkeypatch):
    assert native.kernels() is not None
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "error": None, "disabled": 0})
    monkeypatch.setenv("LABKIT_CFLAGS", "-DLABKIT_TEST_FLAG=1")
    assert native.kernels() is not None
    assert len(list((fresh / "native").glob("*.so"))) == 2
    monkeypatch.setattr(native, "_state", {"lib": None, "tried": False, "error": None, "disabled": 0})
    monkeypatch.setenv("LABKIT_CFLAGS", "-fno-such-flag")
    assert native.kernels() is None and "no-such-flag" in native.why_not()


def test_a_failed_build_falls_back_to_pytorch_with_the_reason(fresh, monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no input files' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.kernels() is None
    assert "could not build native.c" in native.why_not() and "fatal error" in native.why_not()
    assert not list((fresh / "native").glob("*.so"))  # no half-written library left for the next run
    block = nn.Sequential(nn.GroupNorm(8, 32), nn.ReLU()).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 5, 5).contiguous(memory_format=torch.channels_last)
    with fast_layers(block):
        assert "forward" in vars(block)
        fast = block(x)
    torch.testing.assert_close(fast, block(x))


def test_no_compiler_and_switched_off(fresh, monkeypatch):
    monkeypatch.setenv("LABKIT_NATIVE", "0")
    assert native.kernels() is None and native.why_not() == "disabled by LABKIT_NATIVE=0"
    monkeypatch.delenv("LABKIT_NATIVE")
    monkeypatch.setenv("CC", "")
    monkeypatch.setenv("PATH", str(fresh))  # nothing to compile with
    assert native.kernels() is None and "no C compiler" in native.why_not()


def test_the_cache_folder_cannot_be_written(fresh, monkeypatch):
    (fresh / "native").write_text("a file where the folder should be")
    assert native.kernels() is None and native.why_not()


def test_disabled_nests_and_restores(compiled):
    with native.disabled():
        with native.disabled():
            assert native.kernels() is None
        assert native.kernels() is None and "disabled" in native.why_not()
    assert native.kernels() is not None and native.why_not() is None


def test_call_rejects_what_the_kernels_cannot_read(compiled):
    x = torch.randn(2, 4, 32)
    rest = [torch.ones(32), torch.zeros(32), 1e-5, torch.empty(2, 4, 32), torch.empty(2, 8), torch.empty(2, 8)]
    with pytest.raises(ValueError, match="contiguous float32/uint8 CPU tensors"):
        native.call("norm_relu_forward", 2, 4, 32, 8, x.transpose(0, 1), *rest)
    with pytest.raises(ValueError, match="float64"):
        native.call("norm_relu_forward", 2, 4, 32, 8, x.double(), *rest)


def test_same_inputs_same_gradients_on_more_threads_than_cores(compiled, monkeypatch):
    """The backward kernels add the threads' partial sums in thread order, not as they finish."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.GroupNorm(1, 1), nn.ReLU(), nn.Conv2d(1, 32, 3, padding=1))
    net = nn.Sequential(block, nn.MaxPool2d(3, 2), nn.Conv2d(32, 32, 3, padding=1))
    called = spy_on_kernels(monkeypatch)
    x = torch.rand(64, 1, 28, 28)
    grad = torch.randn(64, 32, 13, 13)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        runs = []
        for _ in range(8):
            net.zero_grad()
            with fast_layers(net):
                net(x).backward(grad)
            runs.append([p.grad.clone() for p in net.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert {"block_pool_backward", "conv3x3_weight_grad"} <= set(called)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(run, runs[0]))


def test_a_backward_pass_finishes_on_the_kernels_its_forward_used(compiled):
    block = nn.Sequential(nn.GroupNorm(8, 32), nn.ReLU())
    x = torch.randn(2, 32, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    with fast_layers(block):
        out = block(x)
    with native.disabled():  # switched off between the two passes
        out.sum().backward()
    reference = x.detach().clone().requires_grad_()
    block(reference).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
