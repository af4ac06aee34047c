"""Block specs (resnet, attention) and the tile-program steps they compile to, with strip convolutions."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .groupnorm import _group_norm
from .parking import _DiskKV
from .program import _Step, _Tile


@dataclass(frozen=True)
class _ResnetSpec:
    """A VAE resnet block (no time embedding), whatever its layout:
    out = (shortcut(x) + conv2(drop(act(norm2(conv1(act(norm1(x))))))) / out_scale."""

    norm1: nn.GroupNorm
    conv1: nn.Module
    norm2: nn.GroupNorm
    conv2: nn.Module
    shortcut: nn.Module | None
    act: Callable[[torch.Tensor], torch.Tensor]  # may work in place: gets fresh tensors only
    dropout: nn.Module | None
    out_scale: float


@dataclass(frozen=True)
class _AttnSpec:
    """A spatial self-attention block: out = (x + proj(softmax(q k^T * scale) v)) / rescale
    with q, k, v computed from norm(x). q / k / v map a (B, C, h, w) activation to
    (B, heads, h*w, d); `out` maps the attention output back to (B, C, H, W), projected."""

    norm: nn.GroupNorm | None
    heads: int
    scale: float | None  # None: 1 / sqrt(d), scaled_dot_product_attention's default
    q: Callable[[torch.Tensor], torch.Tensor]
    k: Callable[[torch.Tensor], torch.Tensor]
    v: Callable[[torch.Tensor], torch.Tensor]
    out: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor]
    residual: bool
    rescale: float


#: Convolutions over tiles larger than this many values run in row strips (see _conv_strips).
STRIP_MIN_VALUES: int = 1 << 20
STRIPS: int = 8


def _is_plain_3x3(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros")


def _conv_strips(conv: nn.Module, x: torch.Tensor, pre: Callable[[torch.Tensor], torch.Tensor],
                 up: int = 1) -> torch.Tensor:
    """conv(pre(x)), or with up=2 conv(pre(nearest_upsample(x))), computed in row strips.

    `pre` must act per pixel (a GroupNorm with fixed statistics, an activation), so each
    output strip needs only its input rows plus one context row each side (3x3 kernel):
    the full-size intermediate that `conv(pre(x))` would allocate (one activation of the
    tile, the largest single item of a tile's peak memory) exists one strip at a time.
    Each strip goes through the module itself (so conv subclasses that cast their weights
    per call work); its first and last output rows, computed against the module's zero
    padding instead of their real neighbours, are dropped unless they are canvas rows.
    """
    B, _, H, W = x.shape
    if not _is_plain_3x3(conv) or x.numel() * up * up < STRIP_MIN_VALUES or H < 2 * STRIPS:
        h = F.interpolate(x, scale_factor=2.0, mode="nearest") if up == 2 else x
        return conv(pre(h))
    Ho, Wo = H * up, W * up
    out = None
    step = -(-H // STRIPS)
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        o0, o1 = r0 * up, r1 * up  # output rows of this strip
        c0, c1 = max(0, o0 - 1), min(Ho, o1 + 1)  # rows the 3x3 kernel reads
        s = x[:, :, c0 // up:(c1 - 1) // up + 1]
        if up == 2:
            s = F.interpolate(s, scale_factor=2.0, mode="nearest")[:, :, c0 - (c0 // 2) * 2:][:, :, :c1 - c0]
        s = conv(pre(s))[:, :, o0 - c0:o1 - c0]
        if out is None:
            out = torch.empty(B, s.shape[1], Ho, Wo, dtype=s.dtype, device=s.device)
        out[:, :, o0:o1] = s
        del s
    return out


def _silu(h: torch.Tensor) -> torch.Tensor:
    return F.silu(h, inplace=True)


def _act(fn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation after a GroupNorm. SiLU runs in place: the GroupNorm output is a
    fresh tensor nothing else holds, so this saves one activation of peak memory."""
    return _silu if isinstance(fn, nn.SiLU) else fn


def _plain(fn: Callable[[torch.Tensor], torch.Tensor]) -> _Step:
    """A step without barrier that maps the stack top."""
    return _Step("plain", lambda T, _: T.apply(fn))


def _upsample_step(conv: nn.Module | None) -> _Step:
    """Nearest x2 upsampling, then `conv` (3x3, in strips when large) unless None."""
    if conv is None:
        return _plain(lambda h: F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _plain(lambda h: _conv_strips(conv, h, lambda s: s, up=2))


def _resnet_steps(r: _ResnetSpec) -> list[_Step]:
    def first(T: _Tile, stats: Any) -> None:
        # the input stays on the stack as the skip branch, so GroupNorm + activation cannot
        # run in place: they run strip by strip into conv1
        x = T.stack[-1]
        h = _conv_strips(r.conv1, x, lambda s: r.act(_group_norm(s, r.norm1, stats)))
        if r.shortcut is not None:
            # the shortcut now rather than after conv2 (same op, same input, same bits): a
            # tile waiting at norm2 then holds the skip with the *output* channels. In SD's
            # decoder (256 -> 128 channels at full resolution) that cuts the largest parked
            # state, of the whole run, by a third.
            del x
            T.stack.append(r.shortcut(T.stack.pop()))
        T.stack.append(h)

    def second(T: _Tile, stats: Any) -> None:
        h = r.act(_group_norm(T.stack.pop(), r.norm2, stats, inplace=True))  # conv1's output (mutates_top)
        h = r.conv2(r.dropout(h) if r.dropout is not None else h)
        x = T.stack.pop()  # the skip branch, shortcut applied
        h = h.add_(x)  # conv2's output is ours: add the skip in place
        del x
        T.stack.append(h if r.out_scale == 1 else h.div_(r.out_scale))

    return [_Step("stats", first, r.norm1), _Step("stats", second, r.norm2, mutates_top=True)]


#: queries per scaled_dot_product_attention call against canvas-wide keys (bounds the
#: score matrix where no fused kernel is used)
ATTENTION_QUERY_CHUNK: int = 1024


def _attention_steps(a: _AttnSpec) -> list[_Step]:
    """Queries are the tile's pixels (halo included); keys and values are the tile's own
    pixels, or, as a canvas barrier, those of every tile's core: each canvas pixel once,
    exactly as in the full decode."""
    steps = []
    if a.norm is not None:
        # not in place: the input stays below as the residual
        steps.append(_Step("stats", lambda T, stats: T.stack.append(_group_norm(T.stack[-1], a.norm, stats)), a.norm))
    else:
        steps.append(_Step("plain", lambda T, _: T.stack.append(T.stack[-1])))

    def attend(T: _Tile, kv: Any) -> None:
        h = T.stack.pop()
        res = T.stack.pop()
        shape = tuple(h.shape)
        q = a.q(h)
        if isinstance(kv, _DiskKV):  # out of core: stream the blocks
            del h
            with contextlib.closing(kv.read(q.device)) as blocks:
                o = _attend_blocks(q, blocks, a.scale)
        elif kv is not None:
            del h
            k, v = (t.to(q.device, q.dtype) for t in kv)
            o = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + ATTENTION_QUERY_CHUNK], k, v, scale=a.scale)
                           for i in range(0, q.shape[2], ATTENTION_QUERY_CHUNK)], dim=2)
            del k, v
        else:
            k, v = a.k(h), a.v(h)
            del h
            o = F.scaled_dot_product_attention(q, k, v, scale=a.scale)
            del k, v
        o = a.out(o.to(q.dtype), shape)
        if a.residual:
            o = o.add_(res)
        del res
        T.stack.append(o if a.rescale == 1 else o.div_(a.rescale))

    steps.append(_Step("kv", attend, a))
    return steps


def _attend_blocks(q: torch.Tensor, blocks: Iterator[tuple[torch.Tensor, torch.Tensor]],
                   scale: float | None) -> torch.Tensor:
    """softmax(q k^T * scale) v over keys / values that arrive in blocks, each read once:
    the online softmax (a running maximum m, normaliser l and weighted sum, rescaled by
    exp(m_old - m_new) when the maximum grows; Milakov & Gimelshein 2018). Equal to the
    one-piece attention up to float rounding, in float32."""
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    qf = q.float()
    m = torch.full((B, H, N, 1), -math.inf, device=q.device)
    den = torch.zeros(B, H, N, 1, device=q.device)
    acc = None
    for k, v in blocks:
        k, v = k.float(), v.float()
        if acc is None:
            acc = torch.zeros(B, H, N, v.shape[-1], device=q.device)
        for i in range(0, N, ATTENTION_QUERY_CHUNK):
            c = slice(i, i + ATTENTION_QUERY_CHUNK)
            s = torch.matmul(qf[:, :, c], k.transpose(-1, -2)).mul_(scale)
            new = torch.maximum(m[:, :, c], s.amax(dim=-1, keepdim=True))
            p = s.sub_(new).exp_()
            fix = torch.exp(m[:, :, c] - new)
            den[:, :, c] = den[:, :, c] * fix + p.sum(dim=-1, keepdim=True)
            acc[:, :, c] = acc[:, :, c] * fix + torch.matmul(p, v)
            m[:, :, c] = new
            del s, p
    if acc is None:
        raise RuntimeError("no keys / values to attend over")
    return acc.div_(den)


def _final_steps(norm: nn.GroupNorm, act: Callable[[torch.Tensor], torch.Tensor], conv: nn.Module,
                 tanh: bool = False) -> list[_Step]:
    """norm_out -> activation -> conv_out (-> tanh), the end of every encoder and decoder."""
    def body(T: _Tile, stats: Any) -> None:
        # the stack top is the last block's output, which nothing else holds: in place
        T.apply(lambda h: conv(act(_group_norm(h, norm, stats, inplace=True))))
        if tanh:
            T.apply(torch.tanh_)

    return [_Step("stats", body, norm, mutates_top=True)]
