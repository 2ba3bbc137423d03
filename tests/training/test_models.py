"""Model shapes, the paper's VGG-8 layout, side heads and non-strict loading."""
import pytest
import torch
from torch import nn

from training.models import VGG8, build_model, noisy_weight_names


@pytest.mark.parametrize("name,shape,classes", [("mlp", (1, 8, 8), 10), ("lenet", (1, 28, 28), 10),
                                                ("lenet", (3, 8, 8), 7), ("vgg8", (1, 16, 16), 10),
                                                ("resnet18", (3, 12, 12), 5)])
def test_shapes_and_heads(name, shape, classes):
    m = build_model(name, shape, classes, with_heads=True)
    x = torch.randn(2, *shape)
    out, heads = m(x, heads=True)
    assert out.shape == (2, classes)
    assert len(heads) == {"mlp": 2, "lenet": 2, "vgg8": 3, "resnet18": 4}[name]
    assert all(h.shape == (2, classes) for h in heads)
    assert m(x).shape == (2, classes)
    plain = build_model(name, shape, classes)
    missing, unexpected = plain.load_state_dict(m.state_dict(), strict=False)
    assert not missing and all(k.startswith("heads.") for k in unexpected)


def test_vgg8_matches_paper_layout():
    m = VGG8((1, 32, 32), 10, with_heads=True)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert m.fc1.in_features == 8192 and m.fc1.out_features == 1024
    _, taps = m._trunk(torch.zeros(1, 1, 32, 32))
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert [h.fc1.in_features for h in m.heads] == [64 * 36, 128 * 16, 256 * 9]
    names = noisy_weight_names(m)
    assert names[-1].startswith("heads.") and not names[0].startswith("heads.")
    assert not any("bn" in n or n.endswith("bias") for n in names)


def test_resnet_taps():
    m = build_model("resnet18", (3, 32, 32), 10, with_heads=True)
    _, taps = m._trunk(torch.zeros(1, 3, 32, 32))
    assert [t.shape[1] for t in taps] == [64, 64, 128, 256]
    assert [h.fc1.in_features for h in m.heads] == [64 * 36, 64 * 36, 128 * 16, 256 * 9]


def test_heads_required_for_heads_forward():
    with pytest.raises(RuntimeError, match="without side heads"):
        build_model("mlp", (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8), heads=True)


@pytest.mark.parametrize("name", ["vgg8", "resnet18"])
def test_authors_initialisation_of_every_linear_layer_heads_included(name):
    """Issue #21: kaiming-normal (fan_out) for every conv and Linear of VGG-8 / ResNet-18 and
    their IRS heads, biases 0, as the authors' code; LeNet-5 keeps PyTorch's default."""
    import math

    torch.manual_seed(0)
    model = build_model(name, (1, 32, 32), 10, with_heads=True)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert any(n.startswith("heads.") for n, _ in linears) and len(linears) >= 3
    for n, m in linears:
        want = math.sqrt(2.0 / m.weight.shape[0])  # fan_out of a Linear weight [out, in]
        assert float(m.weight.detach().std()) == pytest.approx(want, rel=0.15 if m.weight.numel() > 2000 else 0.5), n
        assert float(m.bias.detach().abs().max()) == 0.0, n
    lenet = build_model("lenet", (1, 28, 28), 10)
    bound = 1 / math.sqrt(lenet.fc1.weight.shape[1])  # PyTorch's default: U(-1/sqrt(in), 1/sqrt(in))
    assert float(lenet.fc1.weight.detach().abs().max()) <= bound and float(lenet.fc1.bias.detach().abs().max()) > 0


@pytest.mark.parametrize("name", ["vgg8", "resnet18"])
def test_pytorch_linear_init_control_keeps_default_linears_and_kaiming_convs(name):
    """``linear_init="pytorch"`` (the #21 control): every Linear (heads too) keeps PyTorch's default
    U(-1/sqrt(in), 1/sqrt(in)) weights and biases; the convs stay kaiming-normal (fan_out)."""
    import math

    torch.manual_seed(0)
    model = build_model(name, (1, 32, 32), 10, with_heads=True, linear_init="pytorch")
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1 / math.sqrt(m.weight.shape[1])
            assert float(m.weight.detach().abs().max()) <= bound, n
            assert float(m.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.15 if m.weight.numel() > 2000 else 0.5), n
            assert 0 < float(m.bias.detach().abs().max()) <= bound, n
        elif isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 2000:
            fan_out = m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3]
            assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.15), n


def test_linear_init_rejects_unknown_values():
    from training.run_config import ConfigError, RunConfig

    with pytest.raises(ValueError, match="unknown linear_init 'xavier'"):
        build_model("vgg8", (1, 32, 32), 10, linear_init="xavier")
    with pytest.raises(ConfigError, match="linear_init"):
        RunConfig(model="vgg8", linear_init="xavier")
    assert RunConfig.from_dict({**RunConfig(model="vgg8").to_dict(), "linear_init": "pytorch"}).linear_init == "pytorch"
