"""Loss formulas of the methods against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.methods import (
    MethodSpec,
    batch_loss,
    negative_feedback_logits,
    orthogonality_penalty,
)
from training.variation import Variation


def test_negative_feedback_formula_by_hand():
    z0 = torch.tensor([[1.0, 2.0, 3.0]])
    zs = [torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([[0.0, 20.0, 0.0]]), torch.tensor([[0.0, 0.0, 300.0]])]
    beta = 0.5
    # (z0 - 0.5 * (1*z_0 + 0.1*z_1 + 0.01*z_2)) / 4
    want = torch.tensor([[(1 - 0.5 * 10) / 4, (2 - 0.5 * 2) / 4, (3 - 0.5 * 3) / 4]])
    got = negative_feedback_logits(z0, zs, beta, decay=10.0)
    assert torch.allclose(got, want)
    assert torch.allclose(negative_feedback_logits(z0, zs[:1], 0.0), z0 / 2)


class FixedLogits(Variation):
    """A fake backend returning preset logits per call, recording the sigmas it was asked for."""

    def __init__(self, outputs):
        self.outputs, self.sigmas = list(outputs), []

    def forward(self, model, x, sigma, generator, heads=False):
        self.sigmas.append(sigma)
        return self.outputs.pop(0)

    def chip(self, model, sigma, generator, heads=False):
        return {}

    def forward_chip(self, model, chip, x, heads=False):
        return model(x)


def test_ovf_loss_matches_hand_value_and_sigma_order():
    z = [torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[5.0, 5.0]])]
    var = FixedLogits(z)
    spec = MethodSpec("ovf", sigma=0.2, beta=1e-1)
    y = torch.tensor([0])
    loss, main = batch_loss(spec, nn.Identity(), torch.zeros(1, 2), y, var, None)
    comb = (z[0] - 0.1 * (z[1] + 0.1 * z[2] + 0.01 * z[3])) / 4
    a, b = comb[0].tolist()
    want = -a + math.log(math.exp(a) + math.exp(b))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert var.sigmas == pytest.approx([0.2, 0.35, 0.30, 0.25])
    assert main is z[0]


def test_irs_loss_uses_heads_shallowest_first():
    class Fake(FixedLogits):
        def forward(self, model, x, sigma, generator, heads=False):
            assert heads
            return torch.tensor([[1.0, 0.0]]), [torch.tensor([[0.0, 4.0]]), torch.tensor([[8.0, 0.0]])]

    spec = MethodSpec("irs", sigma=0.1, beta=0.5)
    loss, _ = batch_loss(spec, nn.Identity(), torch.zeros(1, 2), torch.tensor([1]), Fake([]), None)
    comb = (torch.tensor([[1.0, 0.0]]) - 0.5 * (torch.tensor([[0.0, 4.0]]) + 0.1 * torch.tensor([[8.0, 0.0]]))) / 3
    assert loss.item() == pytest.approx(F.cross_entropy(comb, torch.tensor([1])).item(), rel=1e-6)


def test_orthogonality_penalty_by_hand():
    m = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert orthogonality_penalty(m).item() == pytest.approx(0.0)
    with torch.no_grad():
        m[0].weight.mul_(2.0)  # W W^T = 4 I -> ||3 I||^2 = 9 * 2
    assert orthogonality_penalty(m).item() == pytest.approx(18.0)
    conv = nn.Sequential(nn.Conv2d(4, 1, 1, bias=False))  # [1, 4] -> gram on rows: 1x1
    with torch.no_grad():
        conv[0].weight.fill_(1.0)
    assert orthogonality_penalty(conv).item() == pytest.approx((4 - 1) ** 2)


def test_orthogonality_penalty_reaches_crossbar_layers():
    """CorrectNet on the crossbar backend: the penalty sees the converted layers' float weights
    (it once saw none, which made CorrectNet train exactly as NIT there)."""
    from training.run_config import RunConfig
    from training.models import build_model, noisy_weight_names
    from training.variation import make_variation

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10)
    expected = orthogonality_penalty(model).item()
    names = noisy_weight_names(model)
    converted = make_variation(RunConfig(noise="crossbar", device_model="rram", sigma_mode="multiply")).prepare(model)
    assert noisy_weight_names(converted) == names and len(names) == 5
    got = orthogonality_penalty(converted)
    assert got.item() == pytest.approx(expected, rel=1e-6) and got.item() > 0 and got.requires_grad


def test_plain_ignores_variation():
    lin = nn.Linear(2, 2)
    loss, z = batch_loss(MethodSpec("plain", 0.3), lin, torch.ones(1, 2), torch.tensor([0]), FixedLogits([]), None)
    assert torch.allclose(z, lin(torch.ones(1, 2)))


def _ce(z, y):
    return F.cross_entropy(z, y).item()


def test_controls_by_hand():
    """Issue #21's controls: nit_temp, ovf_beta0 and nit_multi against hand-computed losses."""
    y = torch.tensor([1])
    z = [torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[5.0, 4.0]])]
    loss, main = batch_loss(MethodSpec("nit_temp", sigma=0.2), nn.Identity(), torch.zeros(1, 2), y,
                            FixedLogits(z[:1]), None)
    assert loss.item() == pytest.approx(_ce(z[0] / 4, y)) and main is z[0]  # T = N + 1 = 4
    loss, _ = batch_loss(MethodSpec("nit_temp", sigma=0.2, temperature=2.5), nn.Identity(), torch.zeros(1, 2), y,
                         FixedLogits(z[:1]), None)
    assert loss.item() == pytest.approx(_ce(z[0] / 2.5, y))
    var = FixedLogits(list(z))
    loss, main = batch_loss(MethodSpec("ovf_beta0", sigma=0.2, beta=0.5), nn.Identity(), torch.zeros(1, 2), y, var, None)
    assert loss.item() == pytest.approx(_ce(z[0] / 4, y)) and main is z[0]
    assert var.sigmas == pytest.approx([0.2, 0.35, 0.30, 0.25])  # OVF's forwards, no gradient from them
    var = FixedLogits(list(z))
    loss, main = batch_loss(MethodSpec("nit_multi", sigma=0.2), nn.Identity(), torch.zeros(1, 2), y, var, None)
    assert loss.item() == pytest.approx(sum(_ce(zi, y) for zi in z) / 4) and main is z[0]
    assert var.sigmas == pytest.approx([0.2] * 4)


class NoisyBN(nn.Module):
    """A linear layer and a BatchNorm; the 'variation' adds sigma to the input."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.lin(x))


class AddSigma(Variation):
    def forward(self, model, x, sigma, generator, heads=False):
        return model(x + sigma)

    def chip(self, model, sigma, generator, heads=False):
        return {}

    def forward_chip(self, model, chip, x, heads=False):
        return model(x)


def test_ovf_frozen_bn_updates_running_statistics_from_the_first_forward_only():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    nets = {}
    for method in ("nit", "ovf", "ovf_frozen_bn"):
        torch.manual_seed(1)
        net = NoisyBN().train()
        loss, _ = batch_loss(MethodSpec(method, sigma=0.2, beta=1e-3), net, x, y, AddSigma(), None)
        loss.backward()
        nets[method] = net
    nit, ovf, frozen = (nets[m].bn for m in ("nit", "ovf", "ovf_frozen_bn"))
    assert torch.equal(frozen.running_mean, nit.running_mean) and torch.equal(frozen.running_var, nit.running_var)
    assert not torch.allclose(ovf.running_mean, nit.running_mean)  # OVF's extra forwards moved them
    assert frozen.momentum == nit.momentum and int(frozen.num_batches_tracked) == 1
    # the feedback forwards still normalise by their own batch statistics: same loss as OVF
    torch.manual_seed(1)
    a = NoisyBN().train()
    torch.manual_seed(1)
    b = NoisyBN().train()
    la, _ = batch_loss(MethodSpec("ovf", sigma=0.2, beta=1e-3), a, x, y, AddSigma(), None)
    lb, _ = batch_loss(MethodSpec("ovf_frozen_bn", sigma=0.2, beta=1e-3), b, x, y, AddSigma(), None)
    assert la.item() == pytest.approx(lb.item(), rel=1e-7)


def test_control_configs():
    from training.run_config import ConfigError, RunConfig

    assert RunConfig(method="ovf_frozen_bn").beta_value == RunConfig(method="ovf").beta_value == 1e-3
    assert RunConfig(method="nit_temp").beta_value == 0.0
    assert RunConfig(method="nit_temp", temperature=3.0).to_dict()["temperature"] == 3.0
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            RunConfig(method="nit_temp", temperature=bad)
    with pytest.raises(ConfigError, match="ovf_beta0 needs at least one extra forward"):
        RunConfig(method="ovf_beta0", ovf_deltas=())
