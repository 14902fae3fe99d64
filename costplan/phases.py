"""Generation phases: what one forward pass of autoregressive generation with a KV cache is. Below both
the model builders (which set up the pass) and the tracer (which records it on the graph)."""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Generation:
    """One forward pass of autoregressive generation with a KV cache.

    ``prefill`` runs the ``tokens`` of the prompt and writes their keys and values into the cache
    (``context`` is 0); ``decode`` runs one new token per sequence against ``context`` tokens already
    cached. ``kv_cache_bytes`` is the whole cache after this pass, every layer, at the traced dtype.
    """

    phase: str                     # prefill | decode
    context: int                   # tokens already in the cache before this pass
    tokens: int                    # new tokens this pass, per sequence
    batch: int
    kv_cache_bytes: int

    @property
    def cached(self) -> int:
        """Tokens in the cache after this pass."""
        return self.context + self.tokens
