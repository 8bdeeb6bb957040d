import pytest
import torch
from torch import nn

from labkit.model import IdentityModel, SimpleMetricEmbedding, _BNReluConv


def test_block_is_groupnorm_relu_conv_keeping_size():
    block = _BNReluConv(1, 32, k=5, bias=False)
    assert [type(m) for m in block] == [nn.GroupNorm, nn.ReLU, nn.Conv2d]
    assert block[0].num_channels == 1 and block[2].bias is None and block[2].kernel_size == (5, 5)
    assert block(torch.randn(2, 1, 28, 28)).shape == (2, 32, 28, 28)


@pytest.mark.parametrize("emb_size", [32, 30, 7])
@pytest.mark.parametrize("batch", [1, 5])
def test_features_shape(emb_size, batch):
    model = SimpleMetricEmbedding(1, emb_size)
    assert model.get_features(torch.rand(batch, 1, 28, 28)).shape == (batch, emb_size)


def test_architecture_pools_28_to_13_to_6_then_global_average():
    model = SimpleMetricEmbedding(1, 32)
    kinds = [type(m) for m in model.net]
    assert kinds == [_BNReluConv, nn.MaxPool2d, _BNReluConv, nn.MaxPool2d, _BNReluConv, nn.AdaptiveAvgPool2d]
    x = torch.rand(2, 1, 28, 28)
    sizes = []
    for layer in model.net:
        x = layer(x)
        sizes.append(x.shape[-1])
    assert sizes == [28, 13, 13, 6, 6, 1]


def test_features_do_not_depend_on_the_batch():
    # GroupNorm: an image's embedding is the same alone or in a batch, in train or eval mode
    model = SimpleMetricEmbedding(1, 32)
    x = torch.rand(6, 1, 28, 28)
    together = model.get_features(x)
    alone = torch.cat([model.get_features(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(model.eval().get_features(x), together, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_loss_matches_torch_triplet_margin_loss(seed):
    torch.manual_seed(seed)
    model = SimpleMetricEmbedding(1, 16).double()
    a, p, n = torch.rand(3, 32, 1, 28, 28, dtype=torch.float64)
    expected = nn.TripletMarginLoss(margin=1.0, p=2)(model.get_features(a), model.get_features(p),
                                                     model.get_features(n))
    assert torch.allclose(model.loss(a, p, n), expected, rtol=1e-10, atol=1e-12)


def test_loss_against_a_hand_written_loop():
    # independent of the network: a model whose features are the inputs themselves
    class Flat(SimpleMetricEmbedding):
        def get_features(self, img):
            return img.flatten(1)

    model = Flat(1, 4)
    a, p, n = torch.randn(3, 10, 1, 2, 2)
    per_triplet = []
    for ai, pi, ni in zip(a.flatten(1).tolist(), p.flatten(1).tolist(), n.flatten(1).tolist()):
        d_ap = sum((x - y) ** 2 for x, y in zip(ai, pi)) ** 0.5
        d_an = sum((x - y) ** 2 for x, y in zip(ai, ni)) ** 0.5
        per_triplet.append(max(0.0, d_ap - d_an + 1.0))
    assert model.loss(a, p, n).item() == pytest.approx(sum(per_triplet) / 10, abs=1e-4)


def test_loss_gradient_is_finite_when_positive_equals_anchor():
    model = SimpleMetricEmbedding(1, 8)
    a, n = torch.rand(2, 4, 1, 28, 28)
    model.loss(a, a.clone(), n).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_zero_when_negatives_are_far():
    class Flat(SimpleMetricEmbedding):
        def get_features(self, img):
            return img.flatten(1)

    a = torch.zeros(4, 1, 2, 2)
    assert Flat(1, 4).loss(a, a + 0.1, a + 5).item() == 0.0


def test_identity_model_flattens():
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(IdentityModel().get_features(x), x.reshape(3, 784))


def test_bad_inputs_fail_early_with_the_fix():
    model = SimpleMetricEmbedding(1, 32)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got \(4, 28, 28\).*unsqueeze\(1\)"):
        model.get_features(torch.rand(4, 28, 28))
    with pytest.raises(ValueError, match=r"got \(4, 3, 28, 28\)"):
        model.get_features(torch.rand(4, 3, 28, 28))
    with pytest.raises(TypeError, match="tensor"):
        model.get_features([[0.0]])
    with pytest.raises(ValueError, match="negative has shape"):
        model.loss(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.rand(3, 1, 28, 28))
    with pytest.raises(ValueError, match="emb_size must be a positive int"):
        SimpleMetricEmbedding(1, 0)
    with pytest.raises(ValueError, match="input_channels"):
        SimpleMetricEmbedding("1")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        IdentityModel().get_features(torch.rand(784))
