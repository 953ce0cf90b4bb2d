"""Torch-Pruning's dependency graph, with pruners for autoprune's own layer types registered."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.zoo.cifar_resnet import ChannelScatterShortcut


class ChannelScatterPruner(tp.pruner.BasePruningFunc):
    """Prunes the option-A shortcut: its input and output channels are removed independently."""

    TARGET_MODULES = ChannelScatterShortcut

    def prune_out_channels(self, layer: ChannelScatterShortcut, idxs: Sequence[int]) -> ChannelScatterShortcut:
        keep = _kept(layer.out_channels, idxs)
        pairs = keep[layer.dst] >= 0
        layer.src, layer.dst = layer.src[pairs], keep[layer.dst[pairs]]
        layer.out_channels -= len(set(idxs))
        return layer

    def prune_in_channels(self, layer: ChannelScatterShortcut, idxs: Sequence[int]) -> ChannelScatterShortcut:
        keep = _kept(layer.in_channels, idxs)
        pairs = keep[layer.src] >= 0
        layer.src, layer.dst = keep[layer.src[pairs]], layer.dst[pairs]
        layer.in_channels -= len(set(idxs))
        return layer

    def get_out_channels(self, layer: ChannelScatterShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelScatterShortcut) -> int:
        return layer.in_channels


def _kept(n: int, removed: Sequence[int]) -> torch.Tensor:
    """Map old channel index -> new index, or -1 where the channel is removed."""
    alive = torch.ones(n, dtype=torch.bool)
    alive[list(removed)] = False
    new = torch.full((n,), -1, dtype=torch.long)
    new[alive] = torch.arange(int(alive.sum()))
    return new


CUSTOMIZED_PRUNERS: dict[type, tp.pruner.BasePruningFunc] = {ChannelScatterShortcut: ChannelScatterPruner()}


def prunable_heads(module: nn.Module) -> bool:
    """Whether ``module`` is an attention layer whose heads autoprune can remove: an ``nn.MultiheadAttention``
    with one packed ``in_proj`` (key and value dimensions equal to the embedding dimension), without
    ``bias_k``/``bias_v`` or ``add_zero_attn``."""
    return (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and module.in_proj_weight is not None
            and module.bias_k is None and not module.add_zero_attn)


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` keeping ``num_heads`` of its heads (see :func:`prune_heads`).

    ``embed_dim`` (the residual stream, the input and output width) is unchanged; ``num_heads`` is the number of
    heads kept and ``head_dim`` the dense head width, so ``in_proj_weight`` is ``(3 * num_heads * head_dim,
    embed_dim)`` and ``out_proj`` maps ``num_heads * head_dim`` features back to ``embed_dim``. ``kept_heads``
    holds the dense indices of the kept heads (a per-head 3-d ``attn_mask`` is sliced with them). The forward
    pass computes what the dense layer computes restricted to those heads, with the same operations as
    ``nn.MultiheadAttention`` (packed input projection, ``scaled_dot_product_attention``, or ``bmm`` when
    attention weights are asked for), so fvcore counts it the same way.
    """

    kept_heads: tuple[int, ...]

    @property
    def inner_dim(self) -> int:
        """Width of the kept heads together: ``num_heads * head_dim``."""
        return self.num_heads * self.head_dim

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            bdim = 0 if self.batch_first else 1
            query, key, value = query.unsqueeze(bdim), key.unsqueeze(bdim), value.unsqueeze(bdim)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first:  # work sequence-first, as nn.MultiheadAttention does
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        heads, d = self.num_heads, self.head_dim
        if query is key and key is value:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w, b = self.in_proj_weight.chunk(3), (self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3)
            q, k, v = F.linear(query, w[0], b[0]), F.linear(key, w[1], b[1]), F.linear(value, w[2], b[2])
        q, k, v = (t.reshape(t.shape[0], bsz * heads, d).transpose(0, 1) for t in (q, k, v))  # (B*H, L, d)
        mask = self._additive_mask(attn_mask, key_padding_mask, bsz, tgt_len, src_len, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = torch.bmm(q * d ** -0.5, k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask.reshape(bsz * heads, tgt_len, src_len)
            elif is_causal:
                scores = scores.masked_fill(torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            weights = F.dropout(scores.softmax(dim=-1), p=dropout)
            out = torch.bmm(weights, v)
        else:
            out = F.scaled_dot_product_attention(
                q.view(bsz, heads, tgt_len, d), k.view(bsz, heads, src_len, d), v.view(bsz, heads, src_len, d),
                attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None,
            )
            weights = None
        out = out.reshape(bsz, heads, tgt_len, d).permute(2, 0, 1, 3).reshape(tgt_len, bsz, heads * d)
        out = self.out_proj(out)
        if self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if unbatched:
                weights = weights.squeeze(0)
        return (out.squeeze(bdim) if unbatched else out), weights

    def _additive_mask(self, attn_mask, key_padding_mask, bsz, tgt_len, src_len, dtype):
        """``attn_mask`` and ``key_padding_mask`` as one float mask of shape ``(B, H, L, S)`` (or None)."""
        def additive(m):
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:  # (B * dense heads, L, S): keep the rows of the kept heads
                mask = mask.view(bsz, -1, tgt_len, src_len)[:, list(self.kept_heads)]
        if key_padding_mask is not None:
            pad = additive(key_padding_mask).view(bsz, 1, 1, src_len)
            mask = pad if mask is None else mask + pad
        if mask is not None:
            mask = mask.expand(bsz, self.num_heads, tgt_len, src_len)
        return mask


def prune_heads(attention: nn.MultiheadAttention, keep: Sequence[int]) -> HeadPrunedMultiheadAttention:
    """A copy of ``attention`` (see :func:`prunable_heads`) keeping only the heads ``keep`` (dense indices).

    The query, key and value rows of the removed heads leave ``in_proj_weight``/``in_proj_bias`` and their
    columns leave ``out_proj``; ``embed_dim`` stays, ``num_heads`` becomes ``len(keep)``, ``head_dim`` stays.
    """
    keep = sorted({int(h) for h in keep})
    old = list(getattr(attention, "kept_heads", range(attention.num_heads)))
    d, inner = attention.head_dim, attention.num_heads * attention.head_dim
    cols = torch.tensor([h * d + i for h in keep for i in range(d)], dtype=torch.long)
    rows = torch.cat([cols + s * inner for s in range(3)])
    new = copy.deepcopy(attention)
    new.__class__ = HeadPrunedMultiheadAttention
    with torch.no_grad():
        new.in_proj_weight = nn.Parameter(attention.in_proj_weight[rows].clone())
        if attention.in_proj_bias is not None:
            new.in_proj_bias = nn.Parameter(attention.in_proj_bias[rows].clone())
        new.out_proj.weight = nn.Parameter(attention.out_proj.weight[:, cols].clone())
    new.out_proj.in_features = len(cols)
    new.num_heads = len(keep)
    new.kept_heads = tuple(old[h] for h in keep)
    return new


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a Torch-Pruning dependency graph (autograd is switched on for the trace)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, customized_pruners=dict(CUSTOMIZED_PRUNERS), verbose=False
        )


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution (its input and output channels are one set)."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.out_channels


def member_role(graph: tp.DependencyGraph, handler: object) -> str:
    """How a group prunes a member: ``out`` or ``in`` channels, or ``both`` for in-out coupled layers."""
    is_out, is_in = graph.is_out_channel_pruning_fn(handler), graph.is_in_channel_pruning_fn(handler)
    if is_out and is_in:
        return "both"
    return "out" if is_out else "in"
