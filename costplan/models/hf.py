"""Transformer architectures built from Hugging Face configs with random weights (nothing downloaded).

``hf:NAME`` is one of the built-in names below (shapes copied from each model's published
``config.json``, cited), or a local ``config.json`` file or model directory read with transformers'
``AutoConfig`` offline (no remote code). A causal LM can be traced in a generation phase: ``prefill``
(the prompt's tokens written into a KV cache) or ``decode`` (one new token per sequence against
``context`` cached tokens), with a static cache on the meta device, as gpt-fast, vLLM and
TensorRT-LLM keep theirs: the new keys and values are written in place and attention reads the whole
cache.
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from costplan.errors import CostplanError, close_names
from costplan.models.source import Instance, ModelSource, example_input
from costplan.phases import PHASES, Generation

Shape = tuple[int, ...]


@dataclass(frozen=True)
class _Arch:
    config: str                     # transformers config class
    model: str                      # transformers model class
    config_kwargs: dict[str, object] = field(default_factory=dict)
    model_kwargs: dict[str, object] = field(default_factory=dict)
    vision: bool = False            # takes pixel_values rather than input_ids


def _llama3(hidden: int, inter: int, layers: int, heads: int) -> dict[str, object]:
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


# Shapes from each model's paper / model card / published config.json; the configs' defaults are the
# base sizes. Parameter counts the tests check are the model cards'.
_ARCHS: dict[str, _Arch] = {
    "bert-base": _Arch("BertConfig", "BertModel", model_kwargs={"add_pooling_layer": True}),
    "bert-large": _Arch("BertConfig", "BertModel",
                        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                         "intermediate_size": 4096}, {"add_pooling_layer": True}),
    "distilbert": _Arch("DistilBertConfig", "DistilBertModel"),
    "roberta-base": _Arch("RobertaConfig", "RobertaModel",
                          {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                           "pad_token_id": 1}),
    "gpt2": _Arch("GPT2Config", "GPT2LMHeadModel"),
    "gpt2-medium": _Arch("GPT2Config", "GPT2LMHeadModel",
                         {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    "vit-base": _Arch("ViTConfig", "ViTModel", vision=True),
    "llama-7b": _Arch("LlamaConfig", "LlamaForCausalLM",
                      {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                       "max_position_embeddings": 2048}),
    # meta-llama/Llama-3.1-8B config.json: 8.03 B parameters, grouped-query attention (8 KV heads)
    "llama-3.1-8b": _Arch("LlamaConfig", "LlamaForCausalLM", _llama3(4096, 14336, 32, 32)),
    # meta-llama/Llama-3.1-70B config.json: 70.6 B parameters
    "llama-3.1-70b": _Arch("LlamaConfig", "LlamaForCausalLM", _llama3(8192, 28672, 80, 64)),
    # mistralai/Mistral-7B-v0.3 config.json: 7.25 B parameters, no sliding window
    "mistral-7b": _Arch("MistralConfig", "MistralForCausalLM",
                        {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
                         "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": None,
                         "tie_word_embeddings": False}),
    # mistralai/Mixtral-8x7B-v0.1 config.json: 46.7 B parameters, 8 experts, 2 routed per token (12.9 B active)
    "mixtral-8x7b": _Arch("MixtralConfig", "MixtralForCausalLM",
                          {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                           "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": None,
                           "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False}),
    # Qwen/Qwen2.5-7B config.json: 7.62 B parameters, biases on q/k/v
    "qwen2.5-7b": _Arch("Qwen2Config", "Qwen2ForCausalLM",
                        {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                         "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                         "tie_word_embeddings": False, "use_sliding_window": False}),
    # google/gemma-2-9b config.json: 9.24 B parameters, head_dim 256, every other layer a 4,096-token
    # sliding window, logits soft-capped
    "gemma-2-9b": _Arch("Gemma2Config", "Gemma2ForCausalLM",
                        {"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                         "vocab_size": 256000, "max_position_embeddings": 8192, "query_pre_attn_scalar": 256,
                         "sliding_window": 4096, "final_logit_softcapping": 30.0,
                         "attn_logit_softcapping": 50.0}),
    # microsoft/Phi-3-mini-4k-instruct config.json: 3.82 B parameters, fused qkv and gate/up projections
    "phi-3-mini": _Arch("Phi3Config", "Phi3ForCausalLM",
                        {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                         "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                         "rope_scaling": None, "sliding_window": 2047, "tie_word_embeddings": False,
                         "pad_token_id": 32000, "bos_token_id": 1, "eos_token_id": 32000}),
}

DEFAULT_SEQ_LEN = 128
DEFAULT_PROMPT = 512


@dataclass(frozen=True)
class Phase:
    """What generation pass to trace: ``phase`` (prefill or decode) and ``context`` (cached tokens)."""

    phase: str
    context: int = 0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise CostplanError(f"unknown phase '{self.phase}': use {' or '.join(PHASES)}")
        if self.context < 0:
            raise CostplanError(f"--context must be 0 or more tokens, got {self.context}")
        if self.phase == "decode" and self.context < 1:
            raise CostplanError("decode needs tokens in the KV cache: give --context N (N >= 1)")
        if self.phase == "prefill" and self.context:
            raise CostplanError("prefill starts from an empty KV cache: give the prompt length with --seq-len "
                                "(or --prompt), not --context")


def names() -> list[str]:
    return list(_ARCHS)


def _is_local(name: str) -> bool:
    return name.endswith(".json") or os.path.sep in name or os.path.exists(name)


def _transformers():  # noqa: ANN202
    try:
        import transformers
    except ImportError:
        raise CostplanError("hf: models need transformers: pip install 'costplan[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _local_config(path: str):  # noqa: ANN202
    """A config from a local config.json or model directory: offline, never running the repo's code."""
    transformers = _transformers()
    if not os.path.exists(path):
        raise CostplanError(f"no such config file or model directory: {path}")
    try:
        return transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001  transformers raises ValueError, OSError, KeyError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CostplanError(f"{path}: transformers cannot read it as a model config: {first}") from None


def _model_class(config: object) -> object:
    """The class named by the config's ``architectures`` (if transformers has it), else its causal LM,
    else its base model."""
    transformers = _transformers()
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise CostplanError(f"transformers has no model class for config type {type(config).__name__}")


def is_causal_lm(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("ForCausalLM") or type(module).__name__.endswith("LMHeadModel")


# ---- mixture of experts --------------------------------------------------------------------------

def _balanced_experts(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor) -> torch.Tensor:
    """A stacked-experts forward (transformers' MixtralExperts layout) that routes by a fixed rule
    instead of the router's choice, which meta tensors cannot make: each token's k picks go to
    experts round-robin, so every expert gets T*k/E tokens (as a load-balanced router aims for) and
    only routed tokens' MACs are counted."""
    tokens, k = top_k_index.shape
    experts = self.num_experts
    out = torch.zeros_like(hidden_states)
    loads = [tokens * k // experts + (1 if e < tokens * k % experts else 0) for e in range(experts)]
    for e, n in enumerate(loads):
        if n == 0:
            continue
        idx = torch.arange(n, device=hidden_states.device)   # n <= tokens: distinct tokens
        x = hidden_states[idx]
        gate, up = torch.nn.functional.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        h = torch.nn.functional.linear(self.act_fn(gate) * up, self.down_proj[e])
        out.index_add_(0, idx, h * top_k_weights[idx, 0, None])
    return out


def _route_experts(module: torch.nn.Module) -> str | None:
    """Give every stacked-experts block of ``module`` :func:`_balanced_experts`; a note saying so, or
    None where the model has no experts. Raises for an experts layout it cannot count."""
    blocks = [m for m in module.modules() if type(m).__name__.endswith("Experts") and hasattr(m, "num_experts")]
    if not blocks:
        return None
    for m in blocks:
        w = getattr(m, "gate_up_proj", None)
        if not (isinstance(w, torch.Tensor) and w.dim() == 3 and isinstance(getattr(m, "down_proj", None), torch.Tensor)
                and w.shape[-1] == m.down_proj.shape[1]):
            raise CostplanError(f"{type(m).__name__}: costplan counts stacked experts laid out as Mixtral's "
                                "(gate_up_proj [experts, 2*ffn, hidden]); this model's are not")
        m.forward = types.MethodType(_balanced_experts, m)
    return (f"mixture of experts: {len(blocks)} blocks of {blocks[0].num_experts} experts; per token only the "
            "routed experts' MACs are counted, with tokens spread evenly over the experts (each expert reads "
            "its weights once per pass if it gets any token)")


# ---- the source ----------------------------------------------------------------------------------

def _shape(arch: _Arch | None, input_shapes: Sequence[Shape] | None, batch: int | None, seq_len: int | None,
           phase: Phase | None) -> Shape:
    b = batch or 1
    if input_shapes:
        shape = input_shapes[0]
        return (b, *shape[1:]) if batch else shape
    if arch is not None and arch.vision:
        return (b, 3, 224, 224)
    if phase is not None and phase.phase == "decode":
        return (b, 1)
    if phase is not None:
        return (b, seq_len or DEFAULT_PROMPT)
    return (b, seq_len or DEFAULT_SEQ_LEN)


def _cache(transformers, config: object, shape: Shape, phase: Phase, device: str, dtype: torch.dtype):  # noqa: ANN001, ANN202
    """A static KV cache holding ``context + tokens`` positions, allocated up front (on meta: no memory)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads")
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    cache = transformers.StaticCache(config=config, max_cache_len=phase.context + shape[1])
    cache.early_initialization(shape[0], kv, head_dim, dtype, torch.device(device))
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return cache, tensors


def source(name: str, *, input_shapes: Sequence[Shape] | None, batch: int | None,
           seq_len: int | None, dtype: torch.dtype = torch.float32, phase: Phase | None = None) -> ModelSource:
    local = _is_local(name)
    arch = None if local else _ARCHS.get(name)
    if not local and arch is None:
        raise CostplanError(f"unknown model 'hf:{name}'.{close_names(name, _ARCHS)} "
                            f"Known: {', '.join('hf:' + n for n in _ARCHS)}; or hf:PATH to a config.json "
                            "or a model directory")
    if local:
        _local_config(name)    # fail early, before tracing
    shape = _shape(arch, input_shapes, batch, seq_len, phase)

    def build(device: str) -> Instance:
        transformers = _transformers()
        if arch is not None:
            config = getattr(transformers, arch.config)(**arch.config_kwargs)
            cls, kwargs = getattr(transformers, arch.model), arch.model_kwargs
        else:
            config = _local_config(name)
            cls, kwargs = _model_class(config), {}
        module = cls(config, **kwargs).eval().to(dtype)   # before the cache, which takes its dtype
        notes = tuple(n for n in [_route_experts(module)] if n)
        if arch is not None and arch.vision:
            return Instance(module, (), {"pixel_values": example_input(shape, device)}, notes=notes)
        if len(shape) != 2:
            raise CostplanError(f"hf:{name} takes token ids of shape BATCHxSEQ, got {'x'.join(map(str, shape))}")
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        tokens = shape[1] + (phase.context if phase else 0)
        if limit and tokens > limit:
            raise CostplanError(f"hf:{name} handles at most {limit} positions; {tokens} tokens asked "
                                f"({'--context + ' if phase and phase.context else ''}--seq-len) are more")
        ids = example_input(shape, device, below=text.vocab_size)
        if phase is None:
            return Instance(module, (), {"input_ids": ids}, notes=notes)
        if not is_causal_lm(module):
            raise CostplanError(f"hf:{name} is not a causal language model ({type(module).__name__}): "
                                "--phase needs one that generates with a KV cache")
        cache, state = _cache(transformers, config, shape, phase, device, dtype)
        positions = torch.arange(phase.context, phase.context + shape[1], device=device)
        generation = Generation(phase.phase, phase.context, shape[1], shape[0],
                                sum(t.numel() * t.element_size() for t in state))
        accepts = inspect.signature(module.forward).parameters
        kwargs = {"input_ids": ids, ("cache" if "cache" in accepts else "past_key_values"): cache,
                  "cache_position": positions, "use_cache": True}
        if "logits_to_keep" in accepts:    # servers compute the next token's logits only, not the prompt's
            kwargs["logits_to_keep"] = 1
        return Instance(module, (), kwargs, state=tuple(state), generation=generation, notes=notes)

    return ModelSource(f"hf:{name}", "hf", build, cpu_fallback=False)
