"""Transformer architectures built from Hugging Face configs with random weights (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from costplan.errors import CostplanError, close_names
from costplan.models.source import Instance, ModelSource

Shape = tuple[int, ...]


@dataclass(frozen=True)
class _Arch:
    config: str                     # transformers config class
    model: str                      # transformers model class
    config_kwargs: dict[str, object] = field(default_factory=dict)
    model_kwargs: dict[str, object] = field(default_factory=dict)
    vision: bool = False            # takes pixel_values rather than input_ids


# Shapes from each model's paper / model card; the configs' defaults are the base sizes.
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
}

DEFAULT_SEQ_LEN = 128


def names() -> list[str]:
    return list(_ARCHS)


def source(name: str, *, input_shapes: Sequence[Shape] | None, batch: int | None,
           seq_len: int | None):
    arch = _ARCHS.get(name)
    if arch is None:
        raise CostplanError(f"unknown model 'hf:{name}'.{close_names(name, _ARCHS)} "
                            f"Known: {', '.join('hf:' + n for n in _ARCHS)}")
    b = batch or 1
    if input_shapes:
        shape = input_shapes[0]
        shape = (b, *shape[1:]) if batch else shape
    elif arch.vision:
        shape = (b, 3, 224, 224)
    else:
        shape = (b, seq_len or DEFAULT_SEQ_LEN)

    def build(device: str) -> Instance:
        try:
            import transformers
        except ImportError:
            raise CostplanError("hf: models need transformers: pip install 'costplan[hf]'") from None
        transformers.logging.set_verbosity_error()
        config = getattr(transformers, arch.config)(**arch.config_kwargs)
        module = getattr(transformers, arch.model)(config, **arch.model_kwargs).eval()
        if arch.vision:
            return Instance(module, (), {"pixel_values": torch.zeros(shape, device=device)})
        if len(shape) != 2:
            raise CostplanError(f"hf:{name} takes token ids of shape BATCHxSEQ, got {'x'.join(map(str, shape))}")
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit and shape[1] > limit:
            raise CostplanError(f"hf:{name} handles at most {limit} tokens; --seq-len {shape[1]} is longer")
        return Instance(module, (), {"input_ids": torch.zeros(shape, dtype=torch.long, device=device)})

    return ModelSource(f"hf:{name}", "hf", build)
