"""What the trace runs differently on the meta device: shape-only stand-ins for meta kernels that are
slow, and attention routed to the fused kernel a real run calls."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _meta_batch_norm(x: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes of an eval-mode batch norm: torch's meta kernel decomposes it in Python, 3 ms a call."""
    channels = x.shape[1] if x.dim() > 1 else 0
    return torch.empty_like(x), x.new_empty((channels,)), x.new_empty((channels,))


# Shape-only stand-ins for meta kernels that are slow; they return what the real ones would.
FAST_META = {
    torch.ops.aten.native_batch_norm.default: _meta_batch_norm,
    torch.ops.aten._native_batch_norm_legit_no_training.default: _meta_batch_norm,
}


def fused_on_meta(sdpa: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``scaled_dot_product_attention`` that, for meta tensors, calls the fused CPU kernel's meta
    function instead of the math decomposition PyTorch runs on meta (two matmuls and a softmax): a
    real CPU or GPU run calls one fused kernel, and a graph traced on meta should have the layer it
    runs (same MACs, no score matrix written and read back)."""
    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                  enable_gqa: bool = False) -> torch.Tensor:
        tensors = (query, key, value)
        # grouped-query attention (query heads a multiple of the KV heads) runs as the same kernel
        shared = key.shape[1] == value.shape[1] and query.shape[1] % key.shape[1] == 0 if enable_gqa else \
            query.shape[1] == key.shape[1] == value.shape[1]
        if all(isinstance(t, torch.Tensor) and t.is_meta and t.dim() == 4 for t in tensors) and not dropout_p and shared:
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, bool(is_causal), attn_mask=attn_mask, scale=scale)[0]
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)
    return attention
