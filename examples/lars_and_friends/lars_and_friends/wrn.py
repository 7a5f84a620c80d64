"""WideResNet-d-k (Zagoruyko & Komodakis 2016) with LayerNorm in place of BatchNorm, the net of Kalra & Barkeshli
(2024)'s warmup experiments: pre-activation wide blocks, each norm a LayerNorm over the channels at every position
(as a channels-last LayerNorm is in their JAX code), widths 16k, 32k, 64k (times the section's `width`, so that
it runs on a CPU), (d - 4) / 6 blocks per stage."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from heurbench import Options, register


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, at each position; its output contiguous NCHW again (a
    channels-last view here sends a 1x1 stride-2 convolution with under 8 input channels, on one CPU thread as
    in each torchrun rank, into a oneDNN backward that corrupts the heap in torch 2.14.1, and the rank hangs)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelLayerNorm(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm2, self.conv2 = ChannelLayerNorm(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        h = F.relu(self.norm1(x))
        out = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return out + (self.shortcut(h) if self.shortcut is not None else x)


class WideResNetLN(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"model.depth = {depth}: a WideResNet's depth is 6n + 4")
        n = (depth - 4) // 6
        widths = [max(1, round(w * width)) for w in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        cin, probes = widths[0], ["conv1"]
        for i, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(cin, w, stride if j == 0 else 1))
                probes.append(f"block{i + 1}.{j}")
                cin = w
            self.add_module(f"block{i + 1}", nn.Sequential(*blocks))
        self.norm = ChannelLayerNorm(cin)
        self.fc = nn.Linear(cin, num_classes)
        self.layer_groups = {"stem": ["conv1"], **{f"block{i}": [f"block{i}"] for i in (1, 2, 3)},
                             "fc_stack": ["norm", "fc"]}
        self.probe_layers = probes + ["fc"]

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


class WrnOptions(Options):
    depth: int = Field(16, ge=10, description="6n + 4")
    widen: int = Field(4, ge=1, description="k, the widening factor")


@register.model("wrn_ln", options=WrnOptions)
def wrn_ln(s: dict) -> WideResNetLN:
    """`model: {name: wrn_ln, depth: 16, widen: 4, width: 1.0}`."""
    return WideResNetLN(s.get("depth", 16), s.get("widen", 4), s["num_classes"], s.get("in_channels", 3),
                        s.get("width", 1.0))
