"""Every path a user takes gives the right number, or says why (issue 12): counting outside the usual
trace, precision spellings, every listed model offline, the files costplan writes, errors before the
work starts, and output that says what it shows."""

from __future__ import annotations

import json
import socket
import warnings

import pytest
import torch
import torch.utils.flop_counter as fc
from torch import nn

import costplan
from costplan.api import analyze, load_graph
from costplan.cli import main
from costplan.errors import CostplanError
from costplan.hardware.profile import parse_profile

# ---- counting -----------------------------------------------------------------------------------


def test_inference_mode_counts_like_no_grad() -> None:
    """Under inference_mode composite ops (aten.linear) reach the tracer undecomposed."""
    with torch.inference_mode():
        linear = analyze(nn.Linear(10, 20), input="4x10")
        resnet = analyze("resnet18")
    assert linear.totals["macs"] == 4 * 10 * 20 and not linear.unsupported
    assert resnet.totals["macs"] == 1_814_073_344 and not resnet.unsupported


def test_a_real_lstm_counts_as_on_meta() -> None:
    """On CPU tensors nn.LSTM runs oneDNN's fused layer: 2 layers x 50 steps x 4 gates x 512 x (in + 512)."""
    lstm = nn.LSTM(256, 512, 2)
    real = analyze(lstm, input="50x1x256")
    expected = 50 * 4 * 512 * (256 + 512) + 50 * 4 * 512 * (512 + 512)
    assert real.totals["macs"] == expected == 183_500_800 and not real.unsupported
    assert load_graph(lstm.to("meta"), input="50x1x256").total_macs == expected


def test_attention_on_meta_is_the_fused_layer_a_real_run_has() -> None:
    """On meta PyTorch runs scaled_dot_product_attention as two matmuls and a softmax; on CPU (and
    GPU) one fused kernel. nn.MultiheadAttention and a direct call trace to the same layers, MACs and
    bytes either way, with one fused attention op each, and the real function is back afterwards."""
    from costplan.trace import trace

    class Direct(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.view(1, 16, 4, 16).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)

    sdpa = torch.nn.functional.scaled_dot_product_attention
    for model in (nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval(), Direct()):
        real = trace(model, (torch.randn(1, 16, 64),))
        meta = load_graph(model.to("meta"), input="1x16x64")
        ops = [(l.op, l.macs, l.act_in_bytes, l.act_out_bytes, l.aten_ops) for l in meta.layers]
        assert ops == [(l.op, l.macs, l.act_in_bytes, l.act_out_bytes, l.aten_ops) for l in real.layers]
        fused = [op for l in meta.layers for op in l.aten_ops if "_scaled_dot_product_flash" in op]
        assert len(fused) == 1 and not any("_softmax" in op for l in meta.layers for op in l.aten_ops)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def _transformer_macs(d: int, heads: int, enc: int, dec: int, ff: int, s: int, t: int) -> int:
    attention = heads * (d // heads) * 2          # q.k and a.v per position pair
    self_attn = lambda n: 4 * n * d * d + n * n * attention  # noqa: E731  q, k, v, out projections
    cross = 2 * t * d * d + 2 * s * d * d + t * s * attention
    return enc * (self_attn(s) + 2 * s * d * ff) + dec * (self_attn(t) + cross + 2 * t * d * ff)


def test_transformer_fast_path_is_counted() -> None:
    """In eval mode nn.Transformer runs torch's fused encoder kernel; costplan counts its layers, and
    says that they are priced as separate layers, naming the modules PyTorch may fuse: each encoder
    layer once (its attention inside it), and the decoder's attention modules."""
    model = nn.Transformer(64, 8, 2, 2, 128, batch_first=True).eval()   # batch_first: the fused path's condition
    with torch.no_grad():
        report = analyze(model, example_inputs=(torch.randn(1, 10, 64), torch.randn(1, 7, 64)))
    assert report.totals["macs"] == _transformer_macs(64, 8, 2, 2, 128, s=10, t=7) and not report.unsupported
    (note,) = [w for w in report.warnings if "fast path" in w]
    assert "this model's 6 encoder layers or attention modules ('encoder.layers.0', 'encoder.layers.1', " \
           "'decoder.layers.0.self_attn' and 3 more) fused" in note and "priced as their separate layers" in note


def test_measure_says_what_the_trace_said_of_a_model_it_times(tmp_path, capsys, monkeypatch) -> None:
    """measure times what PyTorch runs, the encoder fused at inference, against a price of its separate
    layers: it says so, as analyze does (the trace's notes and the build's were analyze's alone)."""
    import costplan.models.files as files

    monkeypatch.setattr(files, "heads_as_given", lambda name, module: ("what the build said",))
    factory = tmp_path / "encoder.py"
    factory.write_text("import torch\ndef build():\n    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)\n"
                       "    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), torch.randn(1, 8, 32)\n")
    assert main(["measure", f"{factory}:build", "--hw", "cpu-xeon", "--repeat", "1", "--warmup", "1", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    said = measured["warnings"]
    (note,) = [w for w in said if "fast path" in w]
    assert "what the build said" in said
    assert "this model's 2 encoder layers or attention modules ('layers.0', 'layers.1') fused" in note
    # and each fused attention is timed whole, against its layers' prices summed
    predicted = {l["name"]: l["predicted_ms"] for l in measured["layers"]}
    assert [b["name"] for b in measured["blocks"]] == ["layers.0.self_attn", "layers.1.self_attn"]
    for block in measured["blocks"]:
        assert f"{block['name']}.attention" in block["layers"] and f"{block['name']}.out_proj" in block["layers"]
        assert block["predicted_ms"] == pytest.approx(sum(predicted[n] for n in block["layers"])) and block["measured_ms"] > 0


def test_a_padding_mask_does_not_break_the_trace() -> None:
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 8, 128, batch_first=True), 2).eval()
    x = torch.randn(2, 10, 64)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True
    from costplan.trace import trace

    with torch.no_grad():
        padded = trace(encoder, (x,), {"src_key_padding_mask": mask})
        plain = trace(encoder, (x,))
    assert padded.total_macs == plain.total_macs == _transformer_macs(64, 8, 2, 0, 128, s=10, t=0) * 2


def test_mixture_of_experts_counts_every_expert_call() -> None:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, vocab_size=100, use_cache=False)
    report = analyze(transformers.MixtralForCausalLM(config).eval(), example_inputs=(torch.zeros(1, 8, dtype=torch.long),))
    tokens, d, kv = 8, 64, 32
    attention = tokens * d * (d + 2 * kv + d) + 4 * tokens * tokens * 2 * 16
    experts = tokens * 2 * (d * 2 * 128 + 128 * d)      # top-2 of 4: gate+up, then down
    assert report.totals["macs"] == attention + tokens * d * 4 + experts + tokens * d * 100
    assert not report.unsupported


class _Ops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bilinear = nn.Bilinear(8, 6, 5)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        out = self.bilinear(a, b).sum()
        out = out + torch.addbmm(torch.zeros(3, 5), c, d).sum()     # 4 x (3x2)@(2x5)
        return out + torch.cdist(c, c.transpose(1, 2).reshape(4, 2, 3)[:, :, :2]).sum()


def test_missing_formulas() -> None:
    report = analyze(_Ops(), input="7x8,7x6,4x3x2,4x2x5")
    rows = {r.name: r.macs for r in report.layers if r.macs}
    assert rows["bilinear"] == 7 * 5 * 8 * 6
    assert sum(rows.values()) == 7 * 5 * 8 * 6 + 4 * 3 * 2 * 5 + 4 * 3 * 2 * 2
    assert not report.unsupported


class _NoMacs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.aminmax(x)
        y = self.norm(x) + torch.histc(x, 4).sum() + torch.floor_divide(x, 2) + a + b
        y = y.index_add(0, torch.tensor([0]), y[:1]) + torch.unique(x.round()).sum()
        return y + torch._weight_norm(self.norm.parametrizations.weight.original1,
                                      self.norm.parametrizations.weight.original0, 0).sum()


def test_ops_that_do_no_macs_are_not_reported_unsupported() -> None:
    report = analyze(_NoMacs(), input="3x4")
    assert not report.unsupported, report.unsupported
    assert not analyze(nn.GRU(8, 8, 2), input="5x1x8").unsupported      # unsafe_split in every GRU


def test_a_parameter_in_an_einsum_belongs_to_its_matmul() -> None:
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8, 6))
            self.out = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.einsum("bd,hde->bhe", x, self.w))

    rows = [r for r in analyze(Heads(), input="2x8").layers]
    matmul = next(r for r in rows if r.macs)
    assert (matmul.macs, matmul.params, matmul.reuse) == (2 * 4 * 8 * 6, 192, 2.0)
    assert not any(r.op == "clone" for r in rows)


# ---- precision ----------------------------------------------------------------------------------


def test_every_spelling_of_a_precision_is_one_precision(resnet50_graph) -> None:
    spellings = [analyze(resnet50_graph, hw="rtx3090", dtype=d) for d in ("fp16", "half", "float16")]
    assert {r.totals["precision"] for r in spellings} == {"float16"}
    assert len({r.totals["latency_ms"] for r in spellings}) == 1
    assert spellings[0].totals["latency_ms"] < analyze(resnet50_graph, hw="rtx3090").totals["latency_ms"] * 0.8
    assert analyze(resnet50_graph, hw="rtx3090", dtype="bf16").totals["precision"] == "bfloat16"
    result = costplan.plan(resnet50_graph, budget="1.05x", hw="rtx3090", dtype="fp16", patterns="2:4",
                           importance="gaussian")
    assert result.precision == "float16" and result.plan.layers
    with pytest.raises(CostplanError, match="int8"):
        analyze(resnet50_graph, dtype="fp4")
    assert analyze(resnet50_graph, hw="h100", dtype="fp8").totals["precision"] == "float8"


def test_a_device_without_the_precision_says_so(resnet50_graph, capsys) -> None:
    report = analyze(resnet50_graph, hw="edge-npu", dtype="float32")
    assert report.totals["precision"] == "int8" and report.totals["requested_precision"] == "float32"
    assert report.warnings and "no float32 figures" in report.warnings[0]
    assert json.loads(report.to_json())["warnings"] == list(report.warnings)
    assert not analyze(resnet50_graph, hw="edge-npu", dtype="int8").warnings
    assert main(["analyze", "resnet18", "--hw", "edge-npu"]) == 0
    assert "warning: edge-npu has no float32 figures" in capsys.readouterr().out


# ---- models and files ---------------------------------------------------------------------------


# one model of each family in every run; the whole list (about 110 s of tracing) in CI's slow step
FAMILIES = {"resnet18", "mobilenet_v3_small", "vit_b_16", "swin_t", "regnet_y_400mf", "quantized_resnet18",
            "fasterrcnn_mobilenet_v3_large_320_fpn", "lraspp_mobilenet_v3_large", "r3d_18", "raft_small",
            "hf:bert-base", "hf:gpt2", "hf:vit-base"}


def _listed() -> list[object]:
    names = costplan.api.model_names()
    return [pytest.param(n, marks=() if n in FAMILIES else pytest.mark.slow)
            for n in names["torchvision"] + names["hf"]
            if n != "hf:llama-7b"]          # built on meta in test_cli (a 27 GB model)


@pytest.mark.parametrize("name", _listed())
def test_every_listed_model_analyzes_offline(monkeypatch, name: str) -> None:
    """Every name `costplan models` lists builds and traces with nothing downloaded."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    # detection models resize each image to 800 px (SSD: 300) before their backbone; at 320 they trace
    # the same layers in a fifth to a half of the time (Keypoint R-CNN 16 s to 3.5 s on one thread)
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    built = GeneralizedRCNNTransform.__init__
    monkeypatch.setattr(GeneralizedRCNNTransform, "__init__",
                        lambda self, min_size, max_size, *args, **kwargs: built(self, 320, 320, *args, **kwargs))
    # and an R-CNN's heads, at their caps of 1000 boxes and 100 detections, at 100 and 5 (Keypoint R-CNN's
    # eight 512-channel convolutions over 100 detections took 12 s)
    from costplan.models import vision

    capped = vision._heads_at_capacity

    def fewer(name: str, module: torch.nn.Module) -> tuple[str, ...]:
        if hasattr(module, "rpn"):
            module.rpn._post_nms_top_n, module.roi_heads.detections_per_img = {"training": 100, "testing": 100}, 5
        return capped(name, module)

    monkeypatch.setattr(vision, "_heads_at_capacity", fewer)
    assert load_graph(name).total_macs > 0


def test_detection_models_are_traced_on_the_cpu_without_a_meta_attempt() -> None:
    """Detection models keep the boxes that pass a threshold (torch.nonzero) and run NMS: shapes from
    data, which the meta device cannot compute. A meta attempt fails every time, after RetinaNet's
    backbone (7 s), so they go to the CPU at once; other torchvision models still try meta first."""
    from costplan.api import _trace_instance
    from costplan.models import instantiate, resolve

    detector = resolve("fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(NotImplementedError, match="nonzero"):   # the premise: meta cannot run it
        _trace_instance(instantiate(detector, "meta"), detector.name)
    assert not detector.meta and not resolve("retinanet_resnet50_fpn").meta
    assert resolve("resnet18").meta and resolve("lraspp_mobilenet_v3_large").meta and resolve("raft_small").meta


def test_a_two_stage_detector_is_priced_with_its_heads_at_their_caps_whatever_its_weights() -> None:
    """An R-CNN's box head runs on the proposals its RPN keeps and its mask or keypoint head on the
    detections over a score threshold: with random weights, a number that changed from build to build
    (Mask R-CNN v2: 333.6, 333.6, then 308.6 GMACs in one process) without a word. Built by name, its
    heads run at their caps, whatever the weights (every weight drawn from N(0, 1): as built, 2 to 9
    proposals and no mask; from N(0, 0.01): scores of 1/91, none over the threshold), and says so."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from costplan.models.vision import _heads_at_capacity

    for seed, std in ((0, 1.0), (1, 1.0), (2, 0.01), (3, 0.01)):
        torch.manual_seed(seed)
        backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())
        backbone.out_channels = 8      # anchors 4 px apart: NMS at 0.7 keeps 276-378 of 400 as built
        model = MaskRCNN(backbone, 91, min_size=128, max_size=128, rpn_anchor_generator=AnchorGenerator(
            ((16, 32),), ((0.5, 1.0, 2.0),)), rpn_pre_nms_top_n_test=400, rpn_post_nms_top_n_test=400,
            box_detections_per_img=20).eval()
        with torch.no_grad():
            for t in model.parameters():
                t.normal_(0.0, std)
        (note,) = _heads_at_capacity("tiny", model)
        rows = {}
        for head in ("box_head", "mask_head"):
            getattr(model.roi_heads, head).register_forward_hook(lambda m, i, o, head=head: rows.update({head: len(i[0])}))
        with torch.no_grad():
            model([torch.rand(3, 128, 128)])
        assert rows == {"box_head": 400, "mask_head": 20}, seed
    assert "priced at their caps, its box head on 400 proposals per image and its mask head on 20 detections" in note
    graph = load_graph("fasterrcnn_mobilenet_v3_large_320_fpn")
    (fc6,) = [l for l in graph.layers if l.name == "roi_heads.box_head.fc6"]
    assert fc6.in_shapes[0][0] == 150 and "its box head on 150 proposals per image (NMS" in graph.notes[0]
    assert load_graph("resnet18").notes == ()


def test_a_two_stage_detector_from_a_file_is_left_as_given_and_says_its_heads_counts_are_this_traces(tmp_path) -> None:
    """A user's own R-CNN is not set to its caps (nothing the user gives is changed), so its heads'
    MACs are whatever this trace's weights let through: the graph says so and how to price the caps."""
    from costplan.models import instantiate, resolve

    factory = tmp_path / "detector.py"
    factory.write_text(
        "import torch\n"
        "from torchvision.models.detection import FasterRCNN\n"
        "from torchvision.models.detection.anchor_utils import AnchorGenerator\n"
        "def build():\n"
        "    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())\n"
        "    backbone.out_channels = 8\n"
        "    return FasterRCNN(backbone, 5, min_size=64, max_size=64, rpn_anchor_generator=AnchorGenerator(\n"
        "        ((16,),), ((1.0,),)), rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50).eval(), \\\n"
        "        ([torch.rand(3, 64, 64)],)\n")
    built = instantiate(resolve(f"{factory}:build"), "cpu")
    assert built.module.rpn.nms_thresh == 0.7 and built.module.roi_heads.score_thresh == 0.05
    (note,) = load_graph(f"{factory}:build").notes
    assert f"{factory}:build is a two-stage detector" in note and "rpn.nms_thresh = 1" in note
    plain = tmp_path / "mlp.py"
    plain.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2), torch.randn(1, 4)\n")
    assert load_graph(f"{plain}:build").notes == ()


def test_a_pruned_file_says_what_was_done_to_it(tmp_path, capsys) -> None:
    """analyze of a file prune wrote reports its non-zero parameters, effective MACs and latency under
    its patterns with no --plan, as analyze of the original under the plan predicted; giving the plan
    again changes nothing and warns of nothing."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"model": "resnet18", "layers": {
        "layer2.0.conv1": {"sparsity": 0.5, "pattern": "channel"},
        "layer3.1.conv2": {"sparsity": 0.5, "pattern": "2:4"}, "layer4.0.conv2": {"sparsity": 0.5, "pattern": "2:4"}}}))
    pruned = tmp_path / "pruned.pt"
    assert main(["prune", "resnet18", "--plan", str(plan), "-o", str(pruned)]) == 0
    capsys.readouterr()
    for extra in ([], ["--plan", str(plan)]):
        assert main(["analyze", str(pruned), "--hw", "rtx3090", "--dtype", "fp16", "--json", *extra]) == 0
        out = capsys.readouterr()
        report = json.loads(out.out)
        assert not report.get("warnings") and "made for" not in out.err
        expected = analyze("resnet18", hw="rtx3090", dtype="fp16", plan=str(plan)).totals
        for key in ("effective_macs", "nonzero_params"):
            assert report["totals"][key] == expected[key], key
        assert report["totals"]["latency_ms"] == pytest.approx(expected["latency_ms"], rel=1e-9)
        assert report["totals"]["nonzero_params"] < report["totals"]["params"]      # the 2:4 zeros, counted


def test_the_cli_reads_the_models_it_writes(tmp_path, capsys) -> None:
    plan, pruned = tmp_path / "plan.json", tmp_path / "pruned.pt"
    assert main(["plan", "resnet18", "--budget", "1.3x", "--hw", "cpu-xeon", "-o", str(plan)]) == 0
    assert main(["prune", "resnet18", "--plan", str(plan), "-o", str(pruned)]) == 0
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["analyze", str(pruned), "--json"]) == 0
    assert not caught, [str(w.message) for w in caught][:3]
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["macs"] == json.loads(plan.read_text())["predicted"]["macs"]
    assert main(["measure", str(pruned), "--hw", "cpu-xeon", "--repeat", "1", "--warmup", "1", "--json"]) == 0


def test_plans_from_a_name_are_repeatable_and_say_whose_weights(tmp_path, capsys) -> None:
    runs = []
    for _ in range(2):
        assert main(["plan", "resnet18", "--budget", "1.3x", "--hw", "cpu-xeon", "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["layers"] == runs[1]["layers"]
    assert "random initial weights" in runs[0]["importance_from"]
    torch.manual_seed(7)
    weights = tmp_path / "trained.pt"
    torch.save(__import__("torchvision").models.resnet18().state_dict(), weights)
    assert main(["plan", "resnet18", "--budget", "1.3x", "--hw", "cpu-xeon", "--json", "--weights", str(weights)]) == 0
    assert json.loads(capsys.readouterr().out)["importance_from"] == f"magnitude, weights from {weights}"
    assert main(["analyze", "resnet34", "--weights", str(weights)]) == 2
    assert "does not fit resnet34" in capsys.readouterr().err


# ---- errors and output --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["analyze", "resnet18", "--json", "-o", "/nonexistent/dir/x.json"],
    ["analyze", "resnet18", "--hw", "rtx3090", "--plot", "/nonexistent/x.png"],
    ["prune", "resnet18", "--plan", "PLAN", "-o", "/nonexistent/x.pt"],
    ["calibrate", "-o", "/nonexistent/x.toml"],
    ["plan", "resnet18", "--budget", "1.2x", "--hw", "rtx3090", "-o", "/tmp"],
])
def test_outputs_are_checked_before_the_work(args, tmp_path, monkeypatch, capsys) -> None:
    import costplan.api as api

    def too_late(*a: object, **k: object) -> None:
        raise AssertionError("the work started before the output path was checked")

    for work in ("calibrate", "load_graph", "load_plan"):
        monkeypatch.setattr(api, work, too_late)
    args = [str(tmp_path / "p.json") if a == "PLAN" else a for a in args]
    assert main(args) == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_typo_in_a_profile_is_an_error() -> None:
    profile = {"name": "mine", "peak_tflops": {"float32": 1.0}, "memory": {"bandwidth_gbs": 10.0},
               "overhead": {"per_op_uss": 400}}
    with pytest.raises(CostplanError, match=r"mine.toml: field 'overhead.per_op_uss' is not a profile field. "
                                            r"Did you mean per_op_us"):
        parse_profile(profile, "mine.toml")
    with pytest.raises(CostplanError, match="'memory.bandwith_gbs'.*Did you mean bandwidth_gbs"):
        parse_profile({**profile, "overhead": {}, "memory": {"bandwidth_gbs": 1.0, "bandwith_gbs": 2.0}}, "mine.toml")


def test_sweeps_write_their_file_and_plans_record_what_they_were_made_for(tmp_path, capsys) -> None:
    front = tmp_path / "sweep.json"
    assert main(["plan", "resnet18", "--hw", "cpu-xeon", "--sweep", "0.8:0.9:2", "-o", str(front)]) == 0
    points = json.loads(front.read_text())["points"]
    assert [(p["point"], p["budget_fraction"]) for p in points] == [(1, 0.8), (2, 0.9)]
    picked = tmp_path / "picked.pt"       # the point a user picks from the table is the one pruned
    assert main(["prune", "resnet18", "--plan", str(front), "--point", "2", "-o", str(picked)]) == 0
    pruned = costplan.load(picked)
    assert sum(p.numel() for p in pruned.parameters()) == points[1]["plan"]["predicted"]["params"]
    assert sum(p.numel() for p in pruned.parameters()) > points[0]["plan"]["predicted"]["params"]
    capsys.readouterr()
    assert main(["prune", "resnet18", "--plan", str(front), "-o", str(picked)]) == 2
    assert "pick one with --point K (points with a plan: 1 (0.8x dense), 2 (0.9x dense))" in capsys.readouterr().err
    plan = tmp_path / "plan.json"
    assert main(["plan", "resnet18", "--budget", "1.2x", "--hw", "cpu-xeon", "-o", str(plan)]) == 0
    data = json.loads(plan.read_text())
    assert data["model"] == "resnet18" and data["input"]["shapes"] == [[1, 3, 224, 224]]
    capsys.readouterr()
    assert main(["analyze", "resnet18", "--plan", str(plan), "--hw", "rtx3090", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "made for cpu-xeon, not rtx3090" in out and "made for input 1x3x224x224, not 4x3x224x224" in out
    assert main(["prune", "resnet34", "--plan", str(plan), "-o", str(tmp_path / "x.pt")]) == 0
    assert "made for resnet18, not resnet34" in capsys.readouterr().err


def test_tables_say_what_they_show(capsys, monkeypatch) -> None:
    assert main(["analyze", "resnet18", "--hw", "rtx3090,edge-npu", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hardware,name") and sum(l.startswith("hardware") for l in lines) == 1
    assert {l.split(",")[0] for l in lines[1:]} == {"rtx3090", "edge-npu"}
    assert main(["analyze", "resnet18", "--hw", "rtx3090,edge-npu", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "compute" in out and " com " not in out and "bound: compute, memory" in out
    from rich.console import Console

    from costplan.render import report_table

    narrow = Console(width=80, record=True)
    narrow.print(report_table(analyze("resnet18", hw="rtx3090"), top=3, width=80))
    text = narrow.export_text()
    assert "bound" in text and "compute" in text and "left out to fit 80" in " ".join(text.split())
    assert all(len(line) <= 80 for line in text.splitlines())
    assert main(["profiles", "show", "rtx3090"]) == 0
    shown = capsys.readouterr().out
    assert "{" not in shown and "384-bit GDDR6X at 19.5 Gbps" in shown and "memory.bandwidth_gbs" in shown


def test_measure_never_prints_negative_framework_time() -> None:
    from costplan.measure import Comparison, LayerTiming
    from costplan.render import measure_table

    c = Comparison(model="m", hardware="h", input_shapes=((1, 3),), predicted_ms=1.0, measured_ms=2.0,
                   measured_runs_ms=(2.0,), layers=(LayerTiming("a", "conv2d", 1.0, 2.5, "compute"),))
    _, text = measure_table(c)
    assert "-0.5" not in str(text) and "0.500 ms more than the whole runs" in str(text)
    assert "framework time is not known" in str(text)
    assert fc.FlopCounterMode  # (imported for the counting tests' reference)


def test_the_runtime_is_said_recorded_and_checked(tmp_path, capsys) -> None:
    """--runtime changes what is modelled, so every number says which one it is for."""
    assert main(["analyze", "resnet18", "--hw", "a100", "--runtime", "eager", "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)["totals"]
    assert main(["analyze", "resnet18", "--hw", "a100", "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)["totals"]
    assert (eager["runtime"], fused["runtime"]) == ("eager", "fused")
    assert eager["latency_ms"] > 2 * fused["latency_ms"]   # a kernel and a dispatch per op
    plan = tmp_path / "plan.json"
    assert main(["plan", "resnet18", "--batch", "64", "--speedup", "1.3x", "--hw", "a100", "--runtime", "eager",
                 "-o", str(plan)]) == 0
    assert "eager runtime" in capsys.readouterr().out
    assert json.loads(plan.read_text())["predicted"]["runtime"] == "eager"
    assert main(["analyze", "resnet18", "--batch", "64", "--plan", str(plan), "--hw", "a100"]) == 0
    assert "made for the eager runtime, not fused" in capsys.readouterr().out
    assert main(["analyze", "resnet18", "--hw", "cpu-xeon", "--runtime", "fused"]) == 2
    assert "cpu-xeon describes no 'fused' runtime" in capsys.readouterr().err
