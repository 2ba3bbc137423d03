"""Attention on the crossbar: nn.MultiheadAttention's projections as crossbar layers, the
activation products digital; TransformerEncoderLayer converted and kept off torch's fused path;
a small transformer classifier trained, converted, calibrated and trained against variation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cimsim.crossbar.config import CrossbarConfig
from cimsim.nn import CIMLinear, CIMMultiheadAttention, calibrate, cim_layers, convert, unconvert, use_mode

IDEAL = CrossbarConfig(device="ideal", adc_range="full", adc_bits=24, tile_rows=32)
NOISY = CrossbarConfig(device="neurram", adc_bits=6, tile_rows=32)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", ["self", "cross", "masks", "causal", "unbatched"])
def test_ideal_mode_is_torchs_multihead_attention(batch_first, case):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double().eval()
    cim = CIMMultiheadAttention.from_module(mha, NOISY)
    L, S, N = 5, 7, 3
    shape = (lambda n, t: (n, t, 8)) if batch_first else (lambda n, t: (t, n, 8))
    x = torch.randn(*shape(N, L), generator=_gen(1), dtype=torch.float64)
    kw = {}
    if case == "self":
        q = k = v = x
    elif case == "unbatched":
        q = k = v = torch.randn(L, 8, generator=_gen(2), dtype=torch.float64)
    else:
        q = x
        k = torch.randn(*shape(N, S), generator=_gen(3), dtype=torch.float64)
        v = torch.randn(*shape(N, S), generator=_gen(4), dtype=torch.float64)
    if case == "masks":
        kw = dict(attn_mask=torch.rand(L, S, generator=_gen(5)) > 0.8,
                  key_padding_mask=torch.tensor([[False] * 6 + [True]] * N))
    if case == "causal":
        q = k = v = x
        kw = dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64), is_causal=True)
    for avg in (True, False):
        want, w_want = mha(q, k, v, average_attn_weights=avg, **kw)
        with use_mode(cim, "ideal"):
            got, w_got = cim(q, k, v, average_attn_weights=avg, **kw)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(w_got, w_want, rtol=1e-10, atol=1e-12)
    assert cim.in_proj.weight is mha.in_proj_weight and cim.out_proj.bias is mha.out_proj.bias


def test_projections_read_the_crossbar_and_match_the_linear_layers():
    """On a chip the projections are exactly the CIMLinear reads of the same arrays; on an ideal
    device the layer is the float attention within 8-bit input/weight quantization."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 16, generator=_gen(6))
    cim = CIMMultiheadAttention.from_module(mha, IDEAL)
    with torch.no_grad():
        want, _ = mha(x, x, x)
        got, _ = cim(x, x, x)
        assert (got - want).abs().max() < 0.02 * want.abs().max()
        noisy = CIMMultiheadAttention.from_module(mha, NOISY)
        y, w = noisy(x, x, x, need_weights=False)
        assert w is None and (y - want).abs().max() > 1e-4  # the crossbar is really in the path
        qkv = noisy.in_proj(x.transpose(0, 1))  # the same array read, (L, N, 3E)
        q, k, v = qkv.chunk(3, -1)
        att = torch.softmax(q.reshape(6, 2, 4, 4).permute(1, 2, 0, 3) @ k.reshape(6, 2, 4, 4).permute(1, 2, 3, 0) / 2, -1)
        o = (att @ v.reshape(6, 2, 4, 4).permute(1, 2, 0, 3)).permute(2, 0, 1, 3).reshape(6, 2, 16)
        torch.testing.assert_close(y, noisy.out_proj(o).transpose(0, 1), rtol=0, atol=0)
    assert isinstance(noisy.in_proj, CIMLinear) and noisy.in_proj.weight.shape == (48, 16)


class TinyTransformer(nn.Module):
    """Token embedding -> one TransformerEncoderLayer -> mean pool -> linear head."""

    def __init__(self, vocab=8, d=16, classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.encoder = nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def _data(n, seed):
    """Class 1 when token 1 appears more often than token 2 in a sequence of 10."""
    g = _gen(seed)
    tokens = torch.randint(0, 8, (n, 10), generator=g)
    y = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).long()
    return tokens, y


def test_transformer_classifier_end_to_end():
    torch.manual_seed(0)
    model = TinyTransformer()
    xtr, ytr = _data(512, 1)
    xte, yte = _data(256, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        i = torch.randint(0, 512, (64,), generator=_gen(step))
        loss = nn.functional.cross_entropy(model(xtr[i]), ytr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        float_out = model(xte)
    float_acc = (float_out.argmax(1) == yte).float().mean().item()
    assert float_acc > 0.8
    convert(model, NOISY, seed=3)
    names = [n for n, _ in cim_layers(model)]
    assert names == ["encoder.self_attn.in_proj", "encoder.self_attn.out_proj", "encoder.linear1", "encoder.linear2",
                     "head"]
    calibrate(model, [(xtr[:256], None)], batches=1)
    with torch.no_grad():
        with use_mode(model, "ideal"):  # the converted model in ideal mode: the float model
            torch.testing.assert_close(model(xte), float_out, rtol=1e-5, atol=1e-5)
        chip_out = model(xte)  # eval, no grad: torch's fused path would skip the crossbar here
    assert (chip_out - float_out).abs().max() > 1e-3
    chip_acc = (chip_out.argmax(1) == yte).float().mean().item()
    assert chip_acc > float_acc - 0.15
    # training against variation: fresh chips every step, the loss goes down
    model.train()
    with use_mode(model, "fresh"):
        losses = []
        for step in range(20):
            i = torch.randint(0, 512, (64,), generator=_gen(100 + step))
            loss = nn.functional.cross_entropy(model(xtr[i]), ytr[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]) * 1.2 and all(torch.isfinite(torch.tensor(losses)))
    unconvert(model)
    assert type(model.encoder.self_attn) is nn.MultiheadAttention and not cim_layers(model)


def test_ideal_device_is_exact_attention_over_the_quantized_projections():
    """The Linear layers' exactness check, for attention: on an ideal device each projection is the
    product of its quantized inputs with the chip's effective weights, plus the digital bias, and
    the rest is the float attention of those projections."""
    import math

    from cimsim.crossbar.mapping import quantize_inputs

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).double().eval()
    cim = CIMMultiheadAttention.from_module(mha, IDEAL).double()
    x = torch.randn(4, 3, 8, generator=_gen(8), dtype=torch.float64)
    with torch.no_grad():
        got, w_got = cim(x, x, x)

        def read(layer, inp):
            arr = layer.chip()
            clip = arr.resolved_input_clip()
            xq = quantize_inputs(inp.reshape(-1, inp.shape[-1]).numpy(), clip, IDEAL.input_bits) * (clip / IDEAL.x_max_int)
            y = torch.from_numpy(xq) @ torch.from_numpy(arr.effective_weights()).T + layer.bias
            return y.view(*inp.shape[:-1], -1)

        q, k, v = read(cim.in_proj, x).chunk(3, -1)
        heads = lambda t: t.reshape(4, 3, 2, 4).permute(1, 2, 0, 3)  # noqa: E731
        att = torch.softmax(heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(4), -1)
        o = (att @ heads(v)).permute(2, 0, 1, 3).reshape(4, 3, 8)
        torch.testing.assert_close(got, read(cim.out_proj, o), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w_got, att.mean(1), rtol=1e-12, atol=1e-12)
