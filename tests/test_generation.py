"""LLM generation: models by config, the KV cache in prefill and decode, MoE routing, precisions of
weights and cache, memory against the device, and a whole generation's sum."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import costplan
from costplan.api import analyze, estimate_latency, generation, load_graph
from costplan.errors import CostplanError
from costplan.hardware import load_profile

# a Llama-shaped model small enough to trace in well under a second: 4 query heads share 2 KV heads
TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 4096}
TINY_MOE = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 4096}


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return f"hf:{path}"


@pytest.mark.parametrize("name, params", [
    # the model cards' parameter counts
    ("llama-3.1-8b", 8_030_261_248), ("mistral-7b", 7_248_023_552), ("mixtral-8x7b", 46_702_792_704),
    ("qwen2.5-7b", 7_615_616_512), ("gemma-2-9b", 9_241_705_984), ("phi-3-mini", 3_821_079_552),
])
def test_built_in_configs_have_the_published_parameter_counts(name: str, params: int) -> None:
    graph = load_graph(f"hf:{name}", seq_len=8)
    assert graph.total_params == params and graph.inputs.device == "meta"


def test_a_local_config_file_or_directory_is_a_model(tiny: str, tmp_path) -> None:
    by_file = load_graph(tiny, seq_len=8)
    by_dir = load_graph(f"hf:{tmp_path}", seq_len=8)
    embed, attn, mlp = 100 * 64, 64 * 64 * 2 + 64 * 32 * 2, 3 * 64 * 96
    assert by_file.total_params == by_dir.total_params == 2 * embed + 2 * (attn + mlp + 2 * 64) + 64
    bad = tmp_path / "bad" / "config.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(CostplanError, match="cannot read it as a model config"):
        load_graph(f"hf:{bad}")


def test_decode_reads_the_whole_cache_and_writes_one_token(tiny: str) -> None:
    """Per layer, attention reads K and V of every cached position (GQA: the 2 KV heads, not the 4
    query heads), the cache update writes the new token's K and V, and the attention's MACs are the
    4 query heads' against context + 1 keys."""
    ctx, head = 300, 16
    graph = load_graph(tiny, phase="decode", context=ctx, batch=2)
    cache = 2 * 2 * (ctx + 1) * head * 4          # batch x KV heads x positions x head_dim x fp32, K or V
    attention = [l for l in graph.layers if l.op == "attention"]
    writes = [l for l in graph.layers if l.op == "index_copy"]
    assert [l.state_bytes for l in attention] == [2 * cache] * 2
    assert [l.state_bytes for l in writes] == [2 * 2 * head * 4] * 4   # one token of K (or V) per call
    assert [l.macs for l in attention] == [2 * 4 * (ctx + 1) * 2 * head] * 2
    assert graph.generation.kv_cache_bytes == 2 * 2 * cache        # layers x (K and V)
    # and the estimate pays it from DRAM though it would fit on chip
    a100 = load_profile("a100")
    assert 2 * cache < a100.onchip_bytes / 2
    est = estimate_latency(graph, a100, dtype="float32")
    assert est.layers[attention[0].name].memory_s >= 2 * cache / (a100.bandwidth * a100.memory_efficiency)


def test_prefill_writes_the_prompt_and_computes_only_the_next_tokens_logits(tiny: str) -> None:
    graph = load_graph(tiny, phase="prefill", seq_len=20)
    assert graph.generation.phase == "prefill" and graph.generation.cached == 20
    head = next(l for l in graph.layers if l.name == "lm_head")
    assert head.macs == 64 * 100                   # one position's logits (servers keep the last)


@pytest.fixture(scope="module")
def llama_8b_two_layers(tmp_path_factory) -> str:
    """Llama-3.1-8B's shapes (GQA, 8 KV heads of 128) in 2 of its 32 layers: traced in a tenth of the time."""
    path = tmp_path_factory.mktemp("llama") / "config.json"
    path.write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 131072}))
    return f"hf:{path}"


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_decode_never_gets_cheaper_with_more_context(llama_8b_two_layers: str, a: int, b: int) -> None:
    graph_a, graph_b = (load_graph(llama_8b_two_layers, phase="decode", context=c) for c in sorted((a, b)))
    t = [estimate_latency(g, "h100", dtype="bfloat16").latency_s for g in (graph_a, graph_b)]
    assert t[0] <= t[1]


def test_a_longer_context_costs_at_least_its_cache_reads() -> None:
    """8,064 more cached tokens of Llama-3.1-8B are 1.06 GB more of K and V read per token (bf16): at
    the h100's attainable bandwidth the step takes that much longer, less at most one kernel floor per
    layer (the short context's reads hide under its 32 attention kernels' floors)."""
    h100 = load_profile("h100")
    short, long = (load_graph("hf:llama-3.1-8b", phase="decode", context=c) for c in (128, 8192))
    extra = 32 * 2 * 8 * 128 * (8192 - 128) * 2
    t = [estimate_latency(g, h100, dtype="bfloat16").latency_s for g in (short, long)]
    assert t[1] - t[0] >= extra / (h100.bandwidth * h100.memory_efficiency) - 32 * h100.half_util_s


def test_moe_counts_only_routed_experts(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_MOE))
    one = load_graph(f"hf:{path}", phase="decode", context=4)           # 1 token x 2 experts
    many = load_graph(f"hf:{path}", seq_len=64)                           # 64 tokens x 2 over 4 experts
    expert_macs = 3 * 64 * 96                    # gate, up and down per token per expert
    experts = lambda g: [l for l in g.layers if ".experts." in l.name and l.macs]  # noqa: E731
    assert sum(l.macs for l in experts(one)) == 2 * 2 * expert_macs             # layers x k experts
    assert sum(l.macs for l in experts(many)) == 2 * 64 * 2 * expert_macs
    # a pass reads the weights of the experts it routes to: two of four in decode, all four here
    assert sum(l.weights_read for l in experts(one)) == 2 * 2 * expert_macs
    assert sum(l.weights_read for l in experts(many)) == 2 * 4 * expert_macs
    assert any("mixture of experts" in n for n in analyze(one).warnings)


def test_precisions_of_math_weights_and_cache(tiny: str) -> None:
    graph = load_graph("hf:llama-3.1-8b", phase="decode", context=2048)
    params = graph.total_params
    fp8 = analyze(graph, hw="h100", dtype="fp8")
    assert fp8.totals["precision"] == "float8" and fp8.totals["weight_bytes"] == params
    assert fp8.totals["kv_cache_bytes"] == 32 * 2 * 8 * 128 * 2049 * 2          # a 16-bit cache
    lacks = analyze(graph, hw="a100", dtype="fp8")
    assert lacks.totals["precision"] == "bfloat16" and "no float8 figures" in lacks.warnings[0]
    w4 = analyze(graph, hw="h100", dtype="bf16", weights_dtype="int4")
    bf16 = analyze(graph, hw="h100", dtype="bf16")
    assert w4.totals["weight_bytes"] == round(params * 4.25 / 8)
    assert bf16.totals["weight_bytes"] == params * 2
    assert w4.totals["latency_ms"] < bf16.totals["latency_ms"] * 0.5              # decode reads weights
    # gpt-fast's weight-only kernels on the a100 read at a share of the bandwidth (the profile's fit)
    slow = analyze(graph, hw="a100", dtype="bf16", weights_dtype="int4").layers
    fast = analyze(graph, hw=dataclasses.replace(load_profile("a100"), weight_only_memory={}), dtype="bf16",
                   weights_dtype="int4").layers
    gemv = next(i for i, r in enumerate(slow) if r.name == "model.layers.0.mlp.up_proj")
    share = load_profile("a100").weight_only_memory["int4"]
    assert 0.5 < share < 1 and slow[gemv].extra["memory_ms"] == pytest.approx(fast[gemv].extra["memory_ms"] / share)
    head = next(r for r in w4.layers if r.name == "lm_head")
    assert head.weight_bytes == round(128256 * 4096 * 4.25 / 8)
    int8 = analyze("resnet18", dtype="int8")
    assert int8.totals["weight_bytes"] == int8.totals["params"]                  # no fp32 bytes left


def test_memory_is_weights_cache_and_activations_against_the_device() -> None:
    graph = load_graph("hf:llama-3.1-8b", phase="decode", context=65536, batch=16)
    big = analyze(graph, hw="a100", dtype="bf16")
    t = big.totals
    assert t["kv_cache_bytes"] == 16 * 32 * 2 * 8 * 128 * 65537 * 2      # 137 GB of cache: more than 80 GB
    assert t["memory_bytes"] > t["kv_cache_bytes"] + t["weight_bytes"] and t["fits"] is False
    assert any("does not fit" in w for w in big.warnings)
    small = analyze(load_graph("hf:llama-3.1-8b", phase="decode", context=128), hw="h100", dtype="bf16")
    assert small.totals["fits"] is True
    assert small.totals["tokens_per_s"] == pytest.approx(1e3 / small.totals["latency_ms"])


def test_a_generation_sums_prefill_and_every_decode_step(tiny: str) -> None:
    g = generation(tiny, hw="a100", prompt=100, generate=50, batch=2)
    first, last = g.first.totals["latency_ms"], g.last.totals["latency_ms"]
    assert g.first.totals["context"] == 100 and g.last.totals["context"] == 148
    assert g.total_ms == pytest.approx(g.prefill.totals["latency_ms"] + 49 * (first + last) / 2)
    assert g.to_dict()["tokens_per_s"] == pytest.approx(2 * 50 / (g.total_ms / 1e3))


def test_phase_mistakes_are_one_line_errors(tiny: str) -> None:
    with pytest.raises(CostplanError, match="--context N"):
        load_graph(tiny, phase="decode")
    with pytest.raises(CostplanError, match="give an hf: model"):
        load_graph("resnet18", phase="decode", context=8)
    with pytest.raises(CostplanError, match="needs --phase decode"):
        load_graph(tiny, context=8)
    with pytest.raises(CostplanError, match="not a causal language model"):
        load_graph("hf:bert-base", phase="prefill")
    with pytest.raises(CostplanError, match="at most 4096 positions"):
        load_graph(tiny, phase="decode", context=5000)
    with pytest.raises(CostplanError, match="--weights-dtype"):
        analyze(tiny, weights_dtype="int3")


def test_a_small_gemm_costs_a_kernel_floor_at_every_precision() -> None:
    """A 12k-MAC linear was 26 us on the a100 at float32 (a MAC-count floor at the CUDA-core rate):
    the floor is a time, the same at FP32 and FP16."""
    import torch

    graph = load_graph(torch.nn.Linear(120, 100), input="1x120")
    a100 = load_profile("a100")
    fp32, fp16 = (estimate_latency(graph, a100, dtype=d).layers[graph.layers[0].name].compute_s
                  for d in ("float32", "float16"))
    assert fp32 == pytest.approx(a100.half_util_s, rel=0.01) and fp16 == pytest.approx(a100.half_util_s, rel=0.01)
    assert fp32 < 5e-6


def test_new_gpu_profiles_state_memory_and_fp8_where_the_part_has_it() -> None:
    for name, gb, fp8 in (("a100-80gb", 80, False), ("h100-pcie", 80, True), ("l4", 24, True), ("l40s", 48, True),
                          ("rtx4090", 24, True), ("a10g", 24, False)):
        p = load_profile(name)
        assert p.memory_capacity == gb * 1e9 and ("float8" in p.peak_macs) == fp8, name
    assert load_profile("a100-80gb").bandwidth == 2039e9 and load_profile("rtx4090").bandwidth == 1008e9
    assert math.isclose(costplan.load_profile("h100").peak_macs["float8"] * 2, 1978.9e12)


def test_a_kv_head_and_its_query_heads_are_pruned_together() -> None:
    """Grouped-query attention (4 query heads on 2 KV heads): a head plan removes a KV head with the
    2 query heads that read it; the compacted model is the one analysis predicts, and computes what
    the masked one does (rotary embeddings read each head in swapped halves on the way)."""
    import torch

    from tests.zoo import prune_and_compact, traced

    _, _, graph = traced("hf:llama-gqa")
    plan = costplan.Plan({"model.layers.0.self_attn": costplan.LayerPlan(0.5, costplan.parse_pattern("head"))})
    report = analyze(graph, plan=plan)
    rows = {r.name: r for r in report.layers}
    assert rows["model.layers.0.self_attn.q_proj"].nonzero_params == 64 * 32        # 2 of 4 query heads
    assert rows["model.layers.0.self_attn.k_proj"].nonzero_params == 64 * 16        # 1 of 2 KV heads
    done = prune_and_compact("hf:llama-gqa", plan)
    assert done.params == report.totals["nonzero_params"] and done.macs == report.totals["effective_macs"]
    assert torch.allclose(done.compacted, done.masked, atol=1e-4, rtol=1e-3)


def test_sensitivity_importance_plans_a_small_causal_lm_from_data() -> None:
    """The sensitivity scan runs on a causal LM with data and an LM loss, and its plan can take GQA
    head groups (4 query heads on 2 KV heads) as well as FFN channels."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, 100, (8, 128), generator=g) for _ in range(2)]
    result = costplan.plan(model, example_inputs=(data[0],), budget="1.15x", hw="cpu-xeon", data=data,
                           loss_fn=lambda m, batch: m(input_ids=batch, labels=batch).loss,
                           importance="sensitivity", levels=4)
    assert "units ranked by magnitude" in result.importance_from
    patterns = {str(p.pattern) for p in result.plan.layers.values()}
    assert "head" in patterns and "channel" in patterns
    assert result.latency_s <= result.dense_latency_s / 1.15 * (1 + 1e-9)


def test_fp16_accumulation_doubles_geforce_tensor_math_only_where_stated() -> None:
    rtx4090, a100 = load_profile("rtx4090"), load_profile("a100")
    assert rtx4090.with_fp16_accumulate().peak_macs["float16"] == pytest.approx(2 * rtx4090.peak_macs["float16"], rel=1e-3)
    assert a100.with_fp16_accumulate().peak_macs == a100.peak_macs           # datacenter parts: one FP16 rate
    assert "no FP16-accumulate rate" in a100.with_fp16_accumulate().option_notes("float16")[0]
    graph = load_graph("resnet50", batch=64)
    fast = analyze(graph, hw="rtx4090", dtype="fp16", fp16_accumulate=True).totals
    slow = analyze(graph, hw="rtx4090", dtype="fp16").totals
    assert fast["fp16_accumulate"] and fast["latency_ms"] < slow["latency_ms"]
    # a flag that cannot apply is not dropped without a word
    assert any("--fp16-accumulate speeds float16" in w
               for w in analyze(graph, hw="rtx4090", fp16_accumulate=True).warnings)
    assert any("--autocast" in w for w in analyze(graph, hw="rtx4090", autocast=True).warnings)
    assert not any("--autocast" in w for w in analyze(graph, hw="rtx4090", dtype="fp16", autocast=True).warnings)


def test_a_plan_that_removes_kv_heads_shrinks_the_cache_and_the_memory(tiny: str) -> None:
    graph = load_graph(tiny, phase="decode", context=1000, batch=8)
    plan = costplan.Plan({f"model.layers.{i}.self_attn": costplan.LayerPlan(0.5, costplan.parse_pattern("head"))
                          for i in range(2)})
    dense, pruned = analyze(graph, hw="a100").totals, analyze(graph, hw="a100", plan=plan).totals
    # 1 of 2 KV heads per layer (the share is taken from the cache writes' bytes, the position index's 8 among them)
    assert pruned["kv_cache_bytes"] == pytest.approx(dense["kv_cache_bytes"] / 2, rel=0.01)
    assert pruned["memory_bytes"] < dense["memory_bytes"] - dense["kv_cache_bytes"] // 2
    assert pruned["latency_ms"] < dense["latency_ms"]
