"""A U-Net (Ronneberger et al. 2015) for gridded fields: any input size, periodic in longitude if asked.

Global lat-lon fields are periodic in longitude (the last dimension): with ``circular_lon=True`` every
3x3 convolution pads the longitude edges by wrapping round, and bilinear upsampling interpolates across
the date line, so a feature straddling 0 E is seen whole and rolling the input in longitude by a
multiple of ``2**depth`` cells rolls the output by the same amount. Latitude (and both dimensions of a
regional grid such as a radar composite, ``circular_lon=False``) is padded with zeros or by replicating
the edge row. Inputs whose size is not a multiple of ``2**depth`` are padded up (wrapping in longitude
when circular) and the output is cropped back, so the logits are on the input's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "instance", "none")
UPSAMPLING = ("transpose", "bilinear")
EDGE_PADDING = ("zeros", "replicate")


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    """Normalisation layer by name; group norm uses the largest group count <= ``groups`` dividing ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: expected one of {NORMS}")


class GridPad(nn.Module):
    """Pad (B, C, H, W) by ``(left, right, top, bottom)`` cells: wrap in W if circular, else zeros/replicate."""

    def __init__(self, circular_lon: bool, edge_padding: str = "zeros"):
        super().__init__()
        if edge_padding not in EDGE_PADDING:
            raise ValueError(f"edge_padding={edge_padding!r}: expected one of {EDGE_PADDING}")
        self.circular_lon = circular_lon
        self.mode = "constant" if edge_padding == "zeros" else "replicate"

    def forward(self, x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
        if self.circular_lon:
            if left or right:
                width = x.shape[-1]
                if left <= width and right <= width:  # one copy: the wrapped columns either side
                    x = torch.cat([x[..., width - left:], x, x[..., :right]], dim=-1)
                else:  # index modulo W: works even when the pad is wider than the field
                    idx = torch.arange(-left, width + right, device=x.device) % width
                    x = x.index_select(-1, idx)
            left = right = 0
        if left or right or top or bottom:
            x = F.pad(x, (left, right, top, bottom), mode=self.mode)
        return x


class ConvBlock(nn.Module):
    """Two (pad, 3x3 conv, norm, ReLU) layers, then dropout: the unit of each U-Net level.

    With zero edge padding the convolution pads latitude itself (no copy), so only the wrapped
    longitude columns are added by hand: one copy of the activations per convolution instead of two.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str, dropout: float, pad: GridPad, groups: int):
        super().__init__()
        bias = norm == "none"
        self.pad = pad
        self.conv_pads_lat = pad.mode == "constant"
        self.conv_pads_lon = self.conv_pads_lat and not pad.circular_lon
        padding = (1 if self.conv_pads_lat else 0, 1 if self.conv_pads_lon else 0)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=bias)
        self.norm1 = _norm(norm, out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=padding, bias=bias)
        self.norm2 = _norm(norm, out_ch, groups)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        lon = 0 if self.conv_pads_lon else 1
        lat = 0 if self.conv_pads_lat else 1
        return self.pad(x, lon, lon, lat, lat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(self._pad(x))), inplace=True)
        x = F.relu(self.norm2(self.conv2(self._pad(x))), inplace=True)
        return self.drop(x)


class Up(nn.Module):
    """Double H and W: a 2x2 stride-2 transposed conv, or bilinear interpolation (wrapping in lon) + 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, mode: str, pad: GridPad):
        super().__init__()
        if mode not in UPSAMPLING:
            raise ValueError(f"upsampling={mode!r}: expected one of {UPSAMPLING}")
        self.mode, self.pad = mode, pad
        self.conv = (nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2) if mode == "transpose"
                     else nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            return self.conv(x)
        if self.pad.circular_lon:  # one wrapped column each side so the interpolation crosses the date line
            x = self.pad(x, 1, 1, 0, 0)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[..., 2:-2]
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net mapping (B, in_channels, H, W) to logits (B, out_channels, H, W) for any H, W.

    ``depth`` poolings (level i has ``width * 2**i`` channels), ``norm`` one of batch | group | instance |
    none, ``dropout`` (channel dropout after each level), ``upsampling`` transpose | bilinear,
    ``circular_lon`` wraps the last dimension (global grids; False for regional ones such as radar),
    ``edge_padding`` zeros | replicate for latitude (and longitude when not circular).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 4, width: int = 32, norm: str = "batch",
                 dropout: float = 0.0, upsampling: str = "transpose", circular_lon: bool = True,
                 edge_padding: str = "zeros", groups: int = 8):
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth={depth}: expected >= 0")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {NORMS}")
        self.depth = depth
        self.pad = GridPad(circular_lon, edge_padding)
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.down.append(ConvBlock(ch, w, norm, dropout, self.pad, groups))
            ch = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(Up(ch, w, upsampling, self.pad))
            self.dec.append(ConvBlock(2 * w, w, norm, dropout, self.pad, groups))
            ch = w
        self.head = nn.Conv2d(ch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects (batch, channels, lat, lon), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        ph, pw = (-h) % m, (-w) % m
        top, left = ph // 2, pw // 2
        x = self.pad(x, left, pw - left, top, ph - top)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., top:top + h, left:left + w]
