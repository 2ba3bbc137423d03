"""Networks for variation-aware training, each with optional IRS side heads.

Every model takes ``input_shape = (C, H, W)`` and ``num_classes`` and works for any input size
(layer widths after flattening are found by a dry forward at construction). ``forward(x)``
returns logits ``[B, classes]``; ``forward(x, heads=True)`` returns ``(logits, [head logits])``
with the heads ordered shallowest first (the order IRS weights them, 10^-i).

Side heads (NeFT's IRS, Qin et al. arXiv 2305.14561): ``AdaptiveAvgPool2d(p) -> flatten ->
Linear(C*p*p, 512) -> ReLU -> Linear(512, classes)``. Tap points:

* VGG-8 (paper): after conv1 (p=6), after conv2 + maxpool (p=4), after conv4 + maxpool (p=3).
* ResNet-18 (paper): after the stem (p=6), layer1 (p=6), layer2 (p=4), layer3 (p=3).
* LeNet-5 (ours): after conv1 + pool (p=4) and after conv2 + pool (p=3).
* MLP (ours): after each hidden layer but the last (features are vectors: no pooling).

Heads live in ``self.heads`` (parameter names ``heads.<k>.*``), so a backbone-only model loads a
checkpoint with heads via ``load_state_dict(strict=False)``, as the authors do.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from .run_config import LINEAR_INITS


def authors_init(model: nn.Module, linear: bool = True) -> None:
    """The NeFT authors' initialisation (their VGG-8 / ResNet-18 code, ../shared/reference/README.md
    s.1): kaiming-normal (fan_out, ReLU gain) weights for every Conv2d and every Linear layer, the
    IRS side heads' included; biases 0; BatchNorm weight 1, bias 0. ``linear=False``: the Linear
    layers are left as they are (PyTorch's default). LeNet-5 and the MLP keep PyTorch's defaults
    (not in the paper)."""
    kinds = (nn.Conv2d, nn.Linear) if linear else (nn.Conv2d,)
    for m in model.modules():
        if isinstance(m, kinds):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SideHead(nn.Module):
    """IRS head: ``[B, C, H, W] -> AdaptiveAvgPool(p) -> [B, C*p*p] -> 512 -> ReLU -> [B, classes]``.

    ``pool=None`` takes vector features ``[B, D]`` directly (MLP).
    """

    def __init__(self, in_features: int, num_classes: int, pool: int | None, hidden: int = 512):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool) if pool is not None else nn.Identity()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(f), 1))))


class TappedNet(nn.Module, metaclass=abc.ABCMeta):
    """Base class: ``_trunk(x)`` yields ``(logits, taps)``; heads are built from the tap shapes."""

    head_pools: tuple[int | None, ...] = ()

    def _init_heads(self, input_shape: tuple[int, int, int], num_classes: int, with_heads: bool) -> None:
        self.heads = nn.ModuleList()
        if not with_heads:
            return
        with torch.no_grad():
            was = self.training
            self.eval()
            _, taps = self._trunk(torch.zeros(1, *input_shape))
            self.train(was)
        for t, p in zip(taps, self.head_pools):
            d = t.shape[1] * (p * p if p is not None else 1)
            self.heads.append(SideHead(d, num_classes, p))

    @abc.abstractmethod
    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone forward: logits ``[B, classes]`` and the tapped features (shallowest first)."""

    def forward(self, x: torch.Tensor, heads: bool = False):
        out, taps = self._trunk(x)
        if not heads:
            return out
        if len(self.heads) == 0:
            raise RuntimeError(f"{type(self).__name__} was built without side heads (with_heads=False)")
        return out, [h(t) for h, t in zip(self.heads, taps)]


def _flat_size(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        was = module.training
        module.eval()
        n = module(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        module.train(was)
    return int(n)


# --------------------------------------------------------------------------- MLP
class MLP(TappedNet):
    """Fully connected net ``flatten -> [Linear -> ReLU] * len(hidden) -> Linear(classes)``."""

    def __init__(self, input_shape, num_classes, hidden=(256, 256, 128), with_heads=False):
        super().__init__()
        d = int(torch.tensor(input_shape).prod())
        self.hidden = nn.ModuleList()
        for h in hidden:
            self.hidden.append(nn.Linear(d, h))
            d = h
        self.fc = nn.Linear(d, num_classes)
        self.head_pools = (None,) * (len(hidden) - 1)
        self._init_heads(input_shape, num_classes, with_heads)

    def _trunk(self, x):
        x = torch.flatten(x, 1)
        taps = []
        for k, layer in enumerate(self.hidden):
            x = torch.relu(layer(x))
            if k < len(self.hidden) - 1:
                taps.append(x)
        return self.fc(x), taps


# ------------------------------------------------------------------------ LeNet-5
class LeNet5(TappedNet):
    """LeNet-5: conv5x5(6, pad 2) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2 -> 120 -> 84 -> classes.

    conv2 has no padding when its input is at least 10 pixels wide (28x28 MNIST gives the classic
    16x5x5 = 400 features) and padding 2 otherwise (so 8x8 digits still work).
    """

    head_pools = (4, 3)

    def __init__(self, input_shape, num_classes, with_heads=False):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        pad2 = 0 if min(h, w) // 2 >= 10 else 2
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.pool = nn.MaxPool2d(2)
        n = _flat_size(nn.Sequential(self.conv1, nn.ReLU(), self.pool, self.conv2, nn.ReLU(), self.pool), input_shape)
        self.fc1 = nn.Linear(n, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self._init_heads(input_shape, num_classes, with_heads)

    def _trunk(self, x):
        t1 = self.pool(torch.relu(self.conv1(x)))
        t2 = self.pool(torch.relu(self.conv2(t1)))
        z = torch.relu(self.fc1(torch.flatten(t2, 1)))
        z = torch.relu(self.fc2(z))
        return self.fc3(z), [t1, t2]


# -------------------------------------------------------------------------- VGG-8
class VGG8(TappedNet):
    """The NeFT authors' VGG-8 (README s.1): conv3x3 (pad 1, no bias) 64 -> 128 -> maxpool -> 256 ->
    256 -> maxpool -> 512 -> 512 -> maxpool, BatchNorm + ReLU after every conv; flatten ->
    Linear 1024 (bias) -> ReLU -> Linear classes; no dropout; :func:`authors_init` (kaiming-normal,
    fan_out, of every conv and Linear layer, the side heads' too; ``linear_init="pytorch"``: of the
    convs only). About 0.54 G MACs per 32x32 image.
    """

    head_pools = (6, 4, 3)
    widths = (64, 128, "M", 256, 256, "M", 512, 512, "M")

    def __init__(self, input_shape, num_classes, with_heads=False, linear_init="authors"):
        super().__init__()
        c = input_shape[0]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for w in self.widths:
            if w == "M":
                continue
            self.convs.append(nn.Conv2d(c, w, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(w))
            c = w
        self.pool = nn.MaxPool2d(2)
        n = 512 * (input_shape[1] // 8) * (input_shape[2] // 8)
        if n == 0:
            raise ValueError(f"VGG-8 needs inputs of at least 8x8 pixels, got {input_shape}")
        self.fc1 = nn.Linear(n, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self._init_heads(input_shape, num_classes, with_heads)
        authors_init(self, linear=_check_linear_init(linear_init) == "authors")

    def _trunk(self, x):
        taps = []
        k = 0
        for w in self.widths:
            if w == "M":
                x = self.pool(x)
                if k in (2, 4):  # after conv2 + pool and after conv4 + pool
                    taps.append(x)
                continue
            x = torch.relu(self.bns[k](self.convs[k](x)))
            k += 1
            if k == 1:  # after conv1
                taps.append(x)
        z = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(z), taps


# ---------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(TappedNet):
    """CIFAR-style ResNet-18: conv3x3(64) + BN + ReLU stem (no max pool), 4 stages of 2 basic
    blocks (64, 128, 256, 512; strides 1, 2, 2, 2), global average pool, Linear(512, classes);
    :func:`authors_init` (``linear_init="pytorch"``: of the convs only)."""

    head_pools = (6, 6, 4, 3)

    def __init__(self, input_shape, num_classes, with_heads=False, linear_init="authors"):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self._init_heads(input_shape, num_classes, with_heads)
        authors_init(self, linear=_check_linear_init(linear_init) == "authors")

    def _trunk(self, x):
        s = torch.relu(self.bn1(self.conv1(x)))
        l1 = self.layer1(s)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return self.fc(torch.flatten(self.avgpool(l4), 1)), [s, l1, l2, l3]


MODEL_CLASSES = {"mlp": MLP, "lenet": LeNet5, "vgg8": VGG8, "resnet18": ResNet18}


def _check_linear_init(linear_init: str) -> str:
    if linear_init not in LINEAR_INITS:
        raise ValueError(f"unknown linear_init {linear_init!r} (choose from {', '.join(LINEAR_INITS)})")
    return linear_init


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, with_heads: bool = False,
                linear_init: str = "authors") -> TappedNet:
    """Build model ``name`` (``mlp | lenet | vgg8 | resnet18``) for ``[C, H, W]`` inputs.
    ``linear_init`` (:data:`LINEAR_INITS`) applies to VGG-8 and ResNet-18; LeNet-5 and the MLP
    always keep PyTorch's default."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODEL_CLASSES)})")
    _check_linear_init(linear_init)
    kw = {"linear_init": linear_init} if name in ("vgg8", "resnet18") else {}
    return MODEL_CLASSES[name](tuple(int(v) for v in input_shape), int(num_classes), with_heads=with_heads, **kw)


def noisy_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights that live on crossbars: every conv/linear ``weight`` (no biases, no BN),
    also of layers already converted to ``cimsim.nn`` crossbar layers.

    Backbone weights come first (module order), head weights last.
    """
    from cimsim.nn import CIMModule  # layers a crossbar backend converted hold their float weight too

    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, CIMModule))]
    return [n for n in names if not n.startswith("heads.")] + [n for n in names if n.startswith("heads.")]
