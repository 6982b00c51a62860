"""Attention building blocks of SCA-MTL (Kim et al. 2022; SPEC 5.6) and attention recording.

Blocks: :class:`CAM` (linear kernelised cross attention), :class:`WindowSelfAttention`
(Swin-style shifted-window self-attention), :class:`SEBlock`, :class:`TaskGatedPropagation`
(MTI-Net's feature propagation with the intended per-channel softmax over tasks) and its
attention form :class:`FPMA`, :class:`CTAM` (cross-task attention) and
:class:`CrossScaleHead` (CSAM, cross-scale attention in each task's head).

Recording: modules that compute attention inherit :class:`RecordsAttention` and call
``self.save_attention(tag, maps)`` in their forward pass. Nothing is kept unless the model runs
inside :func:`record_attention`, which collects every map under ``"<module path>.<tag>"``.
A recorded map is always an ``N x K x H x W`` tensor (K maps per image, spatial like the
feature the module sees), so :mod:`densemtl.attention_viz` can draw any of them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.hrnet import BasicBlock, resize_to


class RecordsAttention(nn.Module):
    """Mixin for modules whose attention weights can be recorded for inspection."""

    _attention_sink: dict[str, torch.Tensor] | None = None
    _attention_path: str = ""

    def save_attention(self, tag: str, maps: torch.Tensor) -> None:
        """Keep ``maps`` (N x K x H x W) under ``"<module path>.<tag>"`` while recording."""
        if self._attention_sink is None:
            return
        if maps.dim() != 4:
            raise ValueError(f"attention maps must be N x K x H x W, got shape {tuple(maps.shape)}")
        key = f"{self._attention_path}.{tag}" if self._attention_path else tag
        self._attention_sink[key] = maps.detach().float().cpu()


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the attention maps of every forward pass run inside the ``with`` block.

    Yields a dict that fills as the model runs: ``{"<module path>.<tag>": N x K x H x W}``.
    A later forward pass overwrites the maps of an earlier one.
    """
    sink: dict[str, torch.Tensor] = {}
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, RecordsAttention)]
    for name, module in modules:
        module._attention_sink = sink
        module._attention_path = name
    try:
        yield sink
    finally:
        for _, module in modules:
            module._attention_sink = None


def conv_bn(in_channels: int, out_channels: int, relu: bool = True) -> nn.Sequential:
    """1x1 conv (no bias) + BN (+ ReLU)."""
    layers = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def heads_for(channels: int, preferred: int) -> int:
    """The largest head count <= ``preferred`` that divides ``channels`` (widths scale heads)."""
    return max(h for h in range(1, preferred + 1) if channels % h == 0)


class CAM(RecordsAttention):
    """Linear (kernelised) single-head cross attention, ATRC's global-context block.

    ``q = softplus(BN(conv(ReLU(BN(conv(target))))))``, ``k`` the same form on the source,
    ``v = ReLU(BN(conv(source)))``; ``out_i = sum_j v_j (k_j . q_i) / sum_j (k_j . q_i)``.
    Cost O(HW C^2): target and source may have different sizes. The output has the target's
    size and ``channels`` channels (float32: the attention sums are never computed in half
    precision). Recorded: the attention each source position receives,
    averaged over target positions (N x 1 x Hs x Ws).
    """

    eps = 1e-12

    def __init__(self, target_channels: int, source_channels: int, channels: int) -> None:
        super().__init__()
        self.query = nn.Sequential(conv_bn(target_channels, channels), conv_bn(channels, channels, relu=False),
                                   nn.Softplus())
        self.key = nn.Sequential(conv_bn(source_channels, channels), conv_bn(channels, channels, relu=False),
                                 nn.Softplus())
        self.value = conv_bn(source_channels, channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, target: torch.Tensor, source: torch.Tensor, tag: str = "received") -> torch.Tensor:
        n, _, h, w = target.shape
        # the sums run over every source position: kept in float32 under mixed precision
        q = self.query(target).flatten(2).float()  # N x D x Nt
        k = self.key(source).flatten(2).float()  # N x D x Ns
        v = self.value(source).flatten(2).float()  # N x C x Ns
        with torch.autocast(target.device.type, enabled=False):
            denom = (k.sum(dim=2, keepdim=True).transpose(1, 2) @ q).clamp_min(self.eps)  # N x 1 x Nt
            out = (v @ k.transpose(1, 2)) @ q / denom
        if self._attention_sink is not None:
            received = k.transpose(1, 2) @ (q / denom).mean(dim=2, keepdim=True)  # N x Ns x 1
            self.save_attention(tag, received.transpose(1, 2).reshape(n, 1, *source.shape[-2:]))
        return out.reshape(n, -1, h, w)


def _relative_position_index(window: int) -> torch.Tensor:
    """(w*w) x (w*w) index into a (2w-1)^2 table of relative offsets between window positions."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def _to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """N x H x W x C (H, W multiples of ``window``) -> (N * windows) x window^2 x C."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def _from_windows(x: torch.Tensor, window: int, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows`."""
    x = x.view(n, h // window, w // window, window, window, -1).transpose(2, 3)
    return x.reshape(n, h, w, -1)


class SwinBlock(RecordsAttention):
    """One (shifted-)window multi-head self-attention block on N x H x W x C tokens.

    ``x + proj(MSA(LayerNorm(x)))`` inside windows of ``window`` x ``window`` tokens with a
    learned relative position bias; the windows are displaced by ``shift`` (Swin's cyclic shift
    with a mask, so no token attends across the image border). Inputs whose size is not a
    multiple of the window are padded, and the padded positions are masked out as keys.
    ``mlp_ratio > 0`` adds Swin's ``x + MLP(LayerNorm(x))`` (the SCA-MTL code has none).
    Recorded: attention received per position, averaged over heads and queries of its window.
    """

    def __init__(self, dim: int, heads: int, window: int = 7, shift: int = 0, mlp_ratio: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels cannot be split into {heads} heads")
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, {window}), got {shift}")
        self.heads, self.window, self.shift = heads, window, shift
        self.scale = (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias, std=0.02)
        self.register_buffer("relative_index", _relative_position_index(window), persistent=False)
        self.mlp = None
        if mlp_ratio > 0:
            hidden = max(1, int(dim * mlp_ratio))
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _window_masks(self, h: int, w: int, hp: int, wp: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per window: ``blocked`` (nW x t x t, True where a query may not attend to a key) and
        ``real`` (nW x t, True for positions inside the image, not padding).

        Keys are blocked when they are padding, or (shifted windows) when they come from another
        region of the image that the cyclic shift wrapped into the same window.
        """
        win, s = self.window, self.shift
        rows = (torch.arange(hp, device=device) + win - s) // win  # region of each row
        cols = (torch.arange(wp, device=device) + win - s) // win
        region = rows[:, None] * (cols.max() + 1) + cols[None, :]
        real = (torch.arange(hp, device=device)[:, None] < h) & (torch.arange(wp, device=device)[None, :] < w)
        maps = torch.stack([region, real.long()], dim=-1)[None]  # 1 x Hp x Wp x 2
        if s:
            maps = torch.roll(maps, shifts=(-s, -s), dims=(1, 2))
        maps = _to_windows(maps, win)  # nW x t x 2
        real = maps[..., 1] == 1
        blocked = (maps[:, :, None, 0] != maps[:, None, :, 0]) | ~real[:, None, :]
        return blocked, real

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        win = self.window
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        tokens = _to_windows(x, win)  # (N * nW) x w^2 x C
        b, t, _ = tokens.shape
        q, k, v = self.qkv(tokens).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # b x heads x t x t
        bias = self.relative_position_bias[self.relative_index.flatten()].view(t, t, self.heads)
        logits = logits + bias.permute(2, 0, 1)
        blocked, real = self._window_masks(h, w, hp, wp, x.device)
        if self.shift or (hp, wp) != (h, w):  # decided on sizes: no device sync
            logits = logits.view(n, -1, self.heads, t, t).masked_fill(blocked[None, :, None], -1e4).view(b, -1, t, t)
        attn = logits.softmax(dim=-1)
        if self._attention_sink is not None:
            self._save_received(attn, real, n, hp, wp, h, w)
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        out = _from_windows(self.proj(out), win, n, hp, wp)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out[:, :h, :w]

    def _save_received(self, attn, real, n, hp, wp, h, w) -> None:
        per_query = attn.mean(dim=1).view(n, -1, *attn.shape[-2:])  # N x nW x t x t
        weights = real[None, :, :, None].float()  # average over real queries only
        received = (per_query * weights).sum(2) / weights.sum(2).clamp_min(1)  # N x nW x t
        maps = _from_windows(received.reshape(-1, attn.shape[-1], 1), self.window, n, hp, wp)
        if self.shift:
            maps = torch.roll(maps, shifts=(self.shift, self.shift), dims=(1, 2))
        self.save_attention("received", maps[:, :h, :w].permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class WindowSelfAttention(nn.Module):
    """Long-range context for a CNN feature map (N x C x H x W -> N x C x H x W).

    As the SCA-MTL code uses Swin: a 1x1 "patch embedding" conv + LayerNorm, ``depth`` window
    attention blocks (windows of 7; every second block shifted by half a window), a final
    LayerNorm.
    """

    def __init__(self, channels: int, heads: int = 6, depth: int = 2, window: int = 7,
                 mlp_ratio: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, channels, 1)
        self.embed_norm = nn.LayerNorm(channels)
        self.blocks = nn.ModuleList(
            SwinBlock(channels, heads, window, shift=0 if i % 2 == 0 else window // 2, mlp_ratio=mlp_ratio)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))  # N x H x W x C
        for block in self.blocks:
            x = block(x)
        return self.norm(x).permute(0, 3, 1, 2).contiguous()


class SEBlock(nn.Module):
    """Squeeze-and-excitation: scale channels by ``sigmoid(MLP(global average))`` (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class TaskGatedPropagation(RecordsAttention):
    """MTI-Net's feature propagation: share information across tasks before the next scale.

    The task features (T x N x C x H x W) are concatenated and passed through ``mixer``
    (T*C -> T*C channels); a softmax over the task axis, separately for every channel and
    pixel, weights each task's own feature (the intended form; the official MTI-Net and
    SCA-MTL code apply it to groups of adjacent channels instead). The weighted features are
    reduced to C channels by a residual block, and every task gets the result back through its
    own squeeze-excitation gate plus a residual. Recorded: ``weight_<task>`` (N x 1 x H x W),
    the softmax weight of each task averaged over channels (they sum to 1 over the tasks).
    """

    def __init__(self, task_names: Sequence[str], channels: int, mixer: nn.Module) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.mixer = mixer
        self.reduce = BasicBlock(len(self.task_names) * channels, channels)
        self.excite = nn.ModuleDict({t: SEBlock(channels) for t in self.task_names})

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacked = torch.stack([features[t] for t in self.task_names], dim=1)  # N x T x C x H x W
        weights = self.mixer(stacked.flatten(1, 2)).view_as(stacked).softmax(dim=1)
        if self._attention_sink is not None:
            for i, t in enumerate(self.task_names):
                self.save_attention(f"weight_{t}", weights[:, i].mean(dim=1, keepdim=True))
        shared = self.reduce((weights * stacked).flatten(1, 2))
        return {t: self.excite[t](shared) + features[t] for t in self.task_names}


class FPMA(TaskGatedPropagation):
    """SCA-MTL's feature propagation with attention: the mixer is window self-attention."""

    def __init__(self, task_names: Sequence[str], channels: int, heads: int = 4, depth: int = 1,
                 window: int = 7, mlp_ratio: float = 0.0) -> None:
        shared = len(task_names) * channels
        mixer = WindowSelfAttention(shared, heads_for(shared, heads), depth, window, mlp_ratio)
        super().__init__(task_names, channels, mixer)


class CTAM(nn.Module):
    """Cross-task attention module at one scale.

    For every target task t and every other task a: ``[F_t, CAM(query=F_t, key/value=F_a)]``;
    all of them concatenated, reduced to C channels by a residual block and added to F_t.
    As in the official code the reduction block is shared by all target tasks.
    A single task passes through unchanged.
    """

    def __init__(self, task_names: Sequence[str], channels: int) -> None:
        super().__init__()
        self.task_names = list(task_names)
        others = len(self.task_names) - 1
        self.attend = nn.ModuleDict({
            t: nn.ModuleDict({a: CAM(channels, channels, channels) for a in self.task_names if a != t})
            for t in self.task_names
        })
        self.reduce = BasicBlock(2 * others * channels, channels) if others else None

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.reduce is None:
            return dict(features)
        out = {}
        for t in self.task_names:
            f_t = features[t]
            parts = [torch.cat([f_t, cam(f_t, features[a])], dim=1) for a, cam in self.attend[t].items()]
            out[t] = f_t + self.reduce(torch.cat(parts, dim=1))
        return out


class CrossScaleHead(nn.Module):
    """CSAM head of one task: cross-scale attention, then HRNet-style fusion at the finest scale.

    Every scale k but the coarsest attends to each coarser scale j of the same task:
    ``CAM(query=F_k, key/value=P_jk(F_j))`` with ``P_jk`` a 1x1 conv + BN to F_k's width (one
    CAM per target scale, shared by its sources, as in the official code), concatenated with F_k.
    All results and the coarsest feature are upsampled to the finest scale and concatenated,
    then 1x1 conv-BN-ReLU and a 1x1 conv to ``out_channels``.
    """

    def __init__(self, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.channels = list(channels)
        scales = len(self.channels)
        self.attend = nn.ModuleList(CAM(c, c, c) for c in self.channels[:-1])
        self.project = nn.ModuleDict({
            f"{j}to{k}": conv_bn(self.channels[j], self.channels[k], relu=False)
            for k in range(scales - 1) for j in range(k + 1, scales)
        })
        fused = sum(2 * (scales - 1 - k) * c for k, c in enumerate(self.channels[:-1])) + self.channels[-1]
        self.fuse = nn.Sequential(nn.Conv2d(fused, fused, 1), nn.BatchNorm2d(fused), nn.ReLU())
        self.classifier = nn.Conv2d(fused, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        parts = []
        for k, cam in enumerate(self.attend):
            for j in range(k + 1, len(features)):
                attended = cam(features[k], self.project[f"{j}to{k}"](features[j]), tag=f"from_scale{j}")
                parts.append(resize_to(torch.cat([features[k], attended], dim=1), size))
        parts.append(resize_to(features[-1], size))
        return self.classifier(self.fuse(torch.cat(parts, dim=1)))
