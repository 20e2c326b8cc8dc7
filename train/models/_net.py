"""MobileNetV2-style networks built from a ModelSpec, with optional TinyTL lite residual branches.

Every conv is bias-free and followed by BatchNorm, so BN folds into the conv at conversion and its
shift becomes the conv's bias (the bias TinyTL-B trains).
"""
from __future__ import annotations


from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._spec import ModelSpec

LITE_NOMINAL_RESOLUTION = 128  # px, the feature map at the first block's input that fixes lite kernel sizes
LITE_MAX_KERNEL = 5
LITE_GROUPS = 2                # group conv groups in the lite branch
GN_CHANNELS_PER_GROUP = 8


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of divisor, never below 90% of v (MobileNetV2's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 channels per group where possible (batch-1 safe, unlike BatchNorm)."""
    groups = channels // GN_CHANNELS_PER_GROUP if channels % GN_CHANNELS_PER_GROUP == 0 else 1
    return nn.GroupNorm(groups, channels)


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)),
                  ("bn", nn.BatchNorm2d(cout))]
        if act:
            layers.append(("act", nn.ReLU6(inplace=True)))
        super().__init__(OrderedDict(layers))


class LiteResidual(nn.Module):
    """TinyTL's lite residual branch (Cai et al., NeurIPS 2020).

    Steps: 2x2 average-pool (halves the map, so the branch's activations cost a quarter) ->
    k x k group conv (2 groups, the block's stride) -> GroupNorm -> ReLU -> 1x1 conv -> GroupNorm
    whose scale starts at zero (so inserting the branch changes nothing) -> bilinear upsample to the
    main branch's output size. The block adds the result to its main branch.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, downsample: bool):
        super().__init__()
        mid = make_divisible(cin, 8)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if downsample else nn.Identity()
        self.conv1 = nn.Conv2d(cin, mid, kernel, stride, kernel // 2, groups=LITE_GROUPS, bias=False)
        self.norm1 = group_norm(mid)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, cout, 1, bias=False)
        self.norm2 = group_norm(cout)
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(self.pool(x))))))
        if tuple(y.shape[-2:]) != tuple(out_size):
            y = F.interpolate(y, size=out_size, mode="bilinear", align_corners=False)
        return y


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> k x k depthwise -> 1x1 project, identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.use_shortcut = stride == 1 and cin == cout
        self.lite: LiteResidual | None = None
        self.in_channels, self.out_channels, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if self.lite is not None:
            y = y + self.lite(x, y.shape[-2:])
        return x + y if self.use_shortcut else y


class MobileNet(nn.Module):
    """stem -> blocks -> [1x1 head conv] -> global average pool -> [dropout] -> linear classifier."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        w = spec.width_multiplier
        cin = make_divisible(spec.stem_channels * w)
        self.stem = ConvBN(spec.in_channels, cin, 3, spec.stem_stride)
        blocks = []
        for stage in spec.stages:
            for i, (c, k, e, keep) in enumerate(zip(stage.channels, stage.kernels, stage.expansions, stage.present)):
                if not keep:
                    continue
                cout = make_divisible(c * w)
                blocks.append(InvertedResidual(cin, cout, k, stage.stride if i == 0 else 1, e))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        if spec.head_channels:
            head = spec.head_channels if w <= 1 else make_divisible(spec.head_channels * w)
            self.head = ConvBN(cin, head, 1)
            cin = head
        else:
            self.head = None
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, spec.num_classes)
        self._init_weights()
        if spec.lite_residual:
            insert_lite_residual(self)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        if self.head is not None:
            x = self.head(x)
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for a new task (the spec records the new class count)."""
        old = self.classifier
        self.classifier = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.spec = self.spec.replace(num_classes=num_classes)


def lite_kernel_sizes(strides: list[int]) -> list[tuple[int, bool]]:
    """(kernel, downsample) of the lite branch for each block, from a nominal 128 px map.

    Steps (TinyTL's rule, fixed by the architecture, not the input resolution):
    1. r = 128, the nominal map at the first block's input.
    2. Per block: the branch sees r / 2 after its 2x2 pool; then r shrinks by the block's stride.
    3. Kernel 5, shrunk by 2 while larger than that map; a 1 px map gets a 1x1 kernel and no pool.
    """
    r, out = LITE_NOMINAL_RESOLUTION, []
    for s in strides:
        seen = max(1, r // 2)
        r //= s
        if seen == 1:
            out.append((1, False))
            continue
        k = LITE_MAX_KERNEL
        while seen < k:
            k -= 2
        out.append((k, True))
    return out


def insert_lite_residual(model: MobileNet) -> None:
    """Give every block but the first a zero-initialised lite residual branch (output unchanged)."""
    sizes = lite_kernel_sizes([b.stride for b in model.blocks])
    for block, (k, down) in list(zip(model.blocks, sizes))[1:]:
        block.lite = LiteResidual(block.in_channels, block.out_channels, k, block.stride, down)
    model.spec = model.spec.replace(lite_residual=True)


def build_model(spec: ModelSpec) -> MobileNet:
    return MobileNet(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


