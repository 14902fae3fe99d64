"""The embedded pruner: schedules, criteria, patterns, masks through training, compaction, saving,
bad input, DDP and the Hugging Face callback."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import costplan
from costplan.errors import CostplanError
from costplan.planfile import Plan, parse_pattern
from costplan.scoring import CRITERIA, SnipMomentum, make_criterion
from costplan.pruning.masks import block_mask, nm_mask, unstructured_mask
from costplan.pruning.schedule import DECAYS, Schedule
from tests.conftest import SmallCNN, graph_of


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with non-trivial statistics, so a wrongly kept channel shows in the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


# ---- schedules -----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 50), length=st.integers(1, 500), frequency=st.integers(1, 40),
       decay=st.sampled_from(DECAYS), target=st.floats(0.0, 0.99))
def test_schedules_rise_and_end_exactly_at_the_target(start, length, frequency, decay, target) -> None:
    s = Schedule(start, start + length, frequency, decay)
    values = [s.sparsity(t, target) for t in range(start + length + 5)]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    assert values[start + length] == target and values[-1] == target
    assert s.sparsity(start - 1, target) == 0.0 if start else True
    assert s.is_pruning_step(start + length) and s.is_pruning_step(start)


def test_agp_cube_is_zhu_and_gupta() -> None:
    s = Schedule(0, 100, 10, "cube")
    assert s.sparsity(50, 0.8) == pytest.approx(0.8 + (0 - 0.8) * (1 - 0.5) ** 3)


def test_bad_schedules() -> None:
    with pytest.raises(CostplanError, match="precedes"):
        Schedule(10, 5)
    with pytest.raises(CostplanError, match="decay"):
        Schedule(0, 10, 1, "quadratic")


# ---- patterns ------------------------------------------------------------------------------------

def test_two_four_keeps_the_two_largest_of_every_four_inputs() -> None:
    w = torch.randn(8, 16, 3, 3)
    keep = nm_mask(w.abs(), 2, 4, 0.5)
    groups = keep.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    values = w.abs().movedim(1, -1).reshape(-1, 4)
    kept_min = torch.where(groups, values, torch.inf).min(1).values
    dropped_max = torch.where(~groups, values, -torch.inf).max(1).values
    assert (kept_min >= dropped_max).all()
    half = nm_mask(w.abs(), 2, 4, 0.25)      # half of the groups 2:4, the rest dense
    assert 1 - half.float().mean() == pytest.approx(0.25, abs=0.01)


def test_unstructured_and_blocks() -> None:
    w = torch.randn(32, 64)
    keep = unstructured_mask(w.abs(), 0.7)
    assert int((~keep).sum()) == int(0.7 * w.numel())
    assert w.abs()[keep].min() >= w.abs()[~keep].max()
    blocks = block_mask(w.abs(), 4, 1, 0.5)
    per_block = blocks.view(8, 4, 64).float().mean(1)
    assert set(per_block.unique().tolist()) <= {0.0, 1.0} and per_block.mean() == 0.5


# ---- criteria and masks through training ---------------------------------------------------------

def small_plan(pattern: str, sparsity: float) -> Plan:
    """conv2 and conv3: element-wise each, or (channel) their one group, coupled by SmallCNN's residual add."""
    return Plan.from_dict({"layers": {n: {"sparsity": sparsity, "pattern": pattern} for n in ("conv2", "conv3")}})


@pytest.mark.parametrize("criterion", sorted(set(CRITERIA) - {"snip-momentum", "magnitude"}))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4x1", "channel"])
def test_training_reaches_the_plan_and_masked_weights_stay_zero(criterion: str, pattern: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    plan = small_plan(pattern, 0.5)
    pruner = costplan.Pruner(model, plan, criterion=criterion, input="2x3x8x8",
                             schedule=Schedule(1, 7, 2, "cube"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    pruner.on_train_begin()
    for step in range(10):
        pruner.on_step_begin(step)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        pruner.on_before_optimizer_step()
        opt.step()
        opt.zero_grad()
        pruner.on_after_optimizer_step()
        for key, mask in pruner.masks().items():
            module, tensor = key.rsplit(".", 1)
            raw = getattr(model.get_submodule(module).parametrizations, tensor).original
            assert (raw[mask == 0] == 0).all(), key
    achieved = pruner.sparsity()
    if pattern == "channel":
        assert achieved["conv2.weight"] == pytest.approx(0.5)
        assert achieved["bn2.bias"] == pytest.approx(0.5)      # the norm after it follows
        assert achieved["dw.weight"] == pytest.approx(0.5)     # so does the depthwise conv
        assert achieved["conv3.weight"] == pytest.approx(0.75)  # its rows, and its columns reading dw
        assert achieved["fc.weight"] == pytest.approx(0.5)     # the classifier's columns
    else:
        assert achieved["conv2.weight"] == pytest.approx(0.5, abs=0.02)
    folded = pruner.remove()
    assert not torch.nn.utils.parametrize.is_parametrized(folded.conv2)
    assert float((folded.conv2.weight == 0).float().mean()) >= 0.48


def test_snip_momentum_is_inc_s_running_score() -> None:
    c = SnipMomentum()
    w, g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    c.accumulate("x", w, g1)
    c.accumulate("x", w, g2)
    assert torch.allclose(c.scores("x", w, 0), 0.9 * (w * g1).abs() + (w * g2).abs())
    with pytest.raises(CostplanError, match="unknown criterion"):
        make_criterion("lottery")


def test_global_scope_removes_the_same_total() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    plan = Plan.from_dict({"layers": {"conv2": {"sparsity": 0.6, "pattern": "unstructured"},
                                      "conv3": {"sparsity": 0.2, "pattern": "unstructured"}}})
    pruner = costplan.Pruner(model, plan, scope="global", input="1x3x8x8")
    pruner.prune()
    masks = pruner.masks()
    removed = sum(int((m == 0).sum()) for m in masks.values())
    assert removed == int(0.6 * 16 * 32 * 9) + int(0.2 * 32 * 32)
    assert pruner.sparsity()["conv2.weight"] != pytest.approx(0.6, abs=1e-3)   # not per layer


# ---- compaction ----------------------------------------------------------------------------------

def compare(model: torch.nn.Module, plan: Plan, inputs: dict, **kwargs) -> torch.nn.Module:
    pruner = costplan.Pruner(model, plan, **kwargs)
    pruner.prune()
    with torch.no_grad():
        masked = model(**inputs)
        small = pruner.compact()
        compact = small(**inputs)
    masked = masked if torch.is_tensor(masked) else masked[0]
    compact = compact if torch.is_tensor(compact) else compact[0]
    assert torch.allclose(masked, compact, atol=1e-4, rtol=1e-4), (masked - compact).abs().max()
    return small


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_compacted_cnn_gives_the_masked_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = randomise_norms(getattr(torchvision.models, name)())
    graph = graph_of(name)
    plan = costplan.plan(graph, budget="1.1x", hw="cpu-xeon", importance="gaussian").plan
    small = compare(model, plan, {"x": torch.randn(2, 3, 224, 224)}, graph=graph, source=name)
    assert n_params(small) < 0.95 * n_params(model)


def test_compacted_bert_gives_the_masked_outputs() -> None:
    from costplan.models import instantiate, resolve

    torch.manual_seed(0)
    graph = graph_of("hf:bert-base")
    layers = {k: {"sparsity": 0.5, "pattern": "head"} for k in list(graph.heads)[:6]}
    layers.update({f"encoder.layer.{i}.intermediate.dense": {"sparsity": 0.3, "pattern": "channel"}
                   for i in range(4, 12)})
    model = instantiate(resolve("hf:bert-base"), "cpu").module.eval()
    small = compare(model, Plan.from_dict({"layers": layers}), {"input_ids": torch.randint(0, 1000, (2, 16))},
                    graph=graph, source="hf:bert-base")
    attention = small.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 6 and attention.query.out_features == 384
    assert small.encoder.layer[5].intermediate.dense.out_features == round(3072 * 0.7)


def test_a_plan_of_zero_ratios_changes_nothing() -> None:
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnet18())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan.from_dict({"layers": {"layer1.0.conv1": {"sparsity": 0.0, "pattern": "channel"},
                                      "layer2.0.conv1": {"sparsity": 0.0, "pattern": "unstructured"}}})
    small = costplan.prune(model, plan, input="1x3x64x64", source="resnet18")
    after = small.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    untouched = model.state_dict()
    assert all(torch.equal(v, untouched[k]) for k, v in before.items())   # input untouched


def test_save_and_load_without_pickled_code(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnet18())
    plan = costplan.plan("resnet18", budget="1.3x", hw="cpu-xeon").plan
    small = costplan.prune(model, plan, input="1x3x224x224", source="resnet18")
    path = tmp_path / "pruned.pt"
    costplan.save(small, path)
    raw = torch.load(path, weights_only=True)                    # plain data only
    assert set(raw) == {"costplan", "description", "state_dict"}
    same = costplan.load(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(same(x), small(x), atol=1e-6)
    assert n_params(same) == n_params(small) < n_params(model)


def test_loading_a_file_built_model_needs_trust(tmp_path) -> None:
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n")
    spec = f"{tmp_path / 'net.py'}:build"
    model = costplan.prune(torch.nn.Linear(4, 2), Plan.from_dict({"layers": {}}), input="1x4", source=spec)
    costplan.save(model, tmp_path / "m.pt")
    with pytest.raises(CostplanError, match="trust_code"):
        costplan.load(tmp_path / "m.pt")
    assert isinstance(costplan.load(tmp_path / "m.pt", trust_code=True), torch.nn.Linear)


def test_a_saved_text_model_runs_on_its_factorys_token_ids(tmp_path) -> None:
    """A file saved from a factory whose example is token ids is rebuilt with that example (ids in its
    vocabulary, int64), not with floats of the recorded shape, which an embedding refuses: `measure A B`
    of the text CNN against its pruned file raised an internal error. Given another shape at pruning,
    the recorded shape serves."""
    from costplan.models import load_saved_instance, resolve

    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def build():\n    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(24, 2))\n"
        "    return model, torch.randint(0, 50, (4, 3))\n")
    spec = f"{tmp_path / 'net.py'}:build"
    factory = resolve(spec).build("cpu")
    model, ids = factory.module, factory.args[0]
    costplan.save(costplan.prune(model, Plan.from_dict({"layers": {}}), example_inputs=(ids,), source=spec), tmp_path / "m.pt")
    built = load_saved_instance(tmp_path / "m.pt", trust_code=True)
    assert built.args[0].dtype == torch.int64 and torch.equal(built.args[0], ids)
    instance = resolve(str(tmp_path / "m.pt"), trust=True).build("cpu")
    with torch.no_grad():
        assert torch.equal(instance.module(*instance.args), model(ids))
    costplan.save(costplan.prune(model, Plan.from_dict({"layers": {}}), example_inputs=(ids[:2],), source=spec), tmp_path / "m2.pt")
    assert load_saved_instance(tmp_path / "m2.pt", trust_code=True).args[0].shape == (2, 3)
    # a factory whose example is keyword inputs: its ids are found there too
    (tmp_path / "kw.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.e = torch.nn.Embedding(50, 8)\n"
        "    def forward(self, input_ids):\n        return self.e(input_ids)\n"
        "def build():\n    torch.manual_seed(0)\n    return Net(), {'input_ids': torch.randint(0, 50, (4, 3))}\n")
    kw = f"{tmp_path / 'kw.py'}:build"
    net = resolve(kw).build("cpu")
    costplan.save(costplan.prune(kw, Plan.from_dict({"layers": {}})), tmp_path / "kw.pt")
    assert torch.equal(load_saved_instance(tmp_path / "kw.pt", trust_code=True).kwargs["input_ids"], net.kwargs["input_ids"])


@pytest.mark.slow   # builds DistilBERT twice
def test_a_saved_hf_model_runs_on_token_ids(tmp_path) -> None:
    """A pruned HF model saved to a file is rebuilt with token ids of its recorded shape (int64), as its
    resolver builds them: before, the file's inputs were floats of that shape, which its embedding refused,
    so neither `measure` nor `analyze` could run the file."""
    from costplan.models import load_saved_instance

    costplan.save(costplan.prune("hf:distilbert", Plan.from_dict({"layers": {}})), tmp_path / "db.pt")
    ids = load_saved_instance(tmp_path / "db.pt").kwargs["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (1, 128)


# ---- bad input, before any weight is touched -----------------------------------------------------

@pytest.mark.parametrize("layers, message", [
    ({"conv9": {"sparsity": 0.5}, "fc2": {"sparsity": 0.5}}, "lacks: conv9, fc2"),
    ({"conv1": {"sparsity": 0.5, "pattern": "2:4"}}, "multiple of 4, not 3"),
    ({"fc": {"sparsity": 0.5, "pattern": "channel"}}, "cannot be removed"),
    ({"conv2": {"sparsity": 0.5, "pattern": "channel"}}, "'conv2' shares its output channels with 'conv3'"),
    ({"conv2": {"sparsity": 0.5, "pattern": "channel"}, "conv3": {"sparsity": 0.25, "pattern": "channel"}},
     "different ratios"),
    ({"conv1": {"sparsity": 0.5, "pattern": "head"}}, "not an attention module"),
])
def test_bad_plans_fail_before_touching_weights(layers, message) -> None:
    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CostplanError, match=message):
        costplan.Pruner(model, Plan.from_dict({"layers": layers}), input="1x3x8x8")
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with pytest.raises(CostplanError, match=r"\[0, 1\)"):
        Plan.from_dict({"layers": {"conv2": {"sparsity": 1.0}}})
    assert parse_pattern("2:4").m == 4


def test_gradient_criteria_need_a_backward_pass() -> None:
    pruner = costplan.Pruner(SmallCNN(), small_plan("unstructured", 0.5), criterion="taylor", input="1x3x8x8")
    with pytest.raises(CostplanError, match="needs gradients"):
        pruner.prune()


# ---- scale: DDP and Hugging Face -----------------------------------------------------------------

DDP_WORKER = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.getcwd())
import costplan
from costplan.pruning.schedule import Schedule
from tests.conftest import SmallCNN
from tests.test_pruning import small_plan
from costplan.scoring import Random
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[2]}", rank=rank, world_size=2)
for pattern, criterion in (case.split(":") for case in sys.argv[3].split(",")):
    torch.manual_seed(0)
    model = SmallCNN()
    # scores differ by rank, so ranks agree only if the pruner broadcasts rank 0's masks
    criterion = Random(seed=rank) if criterion == "random-by-rank" else criterion
    pruner = costplan.Pruner(model, small_plan(pattern, 0.5), criterion=criterion, input="1x3x8x8",
                             schedule=Schedule(1, 5, 1))
    pruner.on_train_begin()
    # DDP would copy rank 0's buffers (the masks) on every forward: keep it from hiding a missing broadcast
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)   # each rank sees different data
    for step in range(6):
        pruner.on_step_begin(step)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        pruner.on_before_optimizer_step()
        opt.step(); opt.zero_grad()
        pruner.on_after_optimizer_step()
    torch.save({"masks": pruner.masks(), "kept": pruner.kept}, sys.argv[4] + f".{pattern}.{rank}")
dist.destroy_process_group()
"""


DDP_CASES = [("unstructured", "random-by-rank"), ("channel", "random-by-rank")]


def test_ddp_ranks_agree_on_masks(tmp_path) -> None:
    """Two ranks whose scores differ end with rank 0's masks, for each case (one process group for
    all cases: a process's start is most of the test's time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "masks"
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    cases = ",".join(f"{p}:{c}" for p, c in DDP_CASES)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(port), cases, str(out)],
                              cwd=os.getcwd(), env=env) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for pattern, _ in DDP_CASES:
        r0, r1 = torch.load(f"{out}.{pattern}.0"), torch.load(f"{out}.{pattern}.1")
        m0, m1 = r0["masks"], r1["masks"]
        assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0), pattern
        assert any((m == 0).any() for m in m0.values()), pattern
        assert r0["kept"].keys() == r1["kept"].keys() and all(
            torch.equal(r0["kept"][k], r1["kept"][k]) for k in r0["kept"]), pattern


def test_hugging_face_trainer_callback(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=100, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, 100, (16, 8))
    data = [{"input_ids": ids[i], "labels": int(i % 2)} for i in range(16)]
    plan = Plan.from_dict({"layers": {f"bert.encoder.layer.{i}.intermediate.dense": {"sparsity": 0.5,
                                                                                     "pattern": "channel"}
                                      for i in range(2)}})
    pruner = costplan.Pruner(model, plan, criterion="taylor", example_inputs=(ids[:2],),
                             schedule=Schedule(1, 3, 1))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    transformers.Trainer(model=model, args=args, train_dataset=data,
                         callbacks=[costplan.trainer_callback(pruner)]).train()
    assert pruner.sparsity()["bert.encoder.layer.0.intermediate.dense.weight"] == pytest.approx(0.5)
    small = pruner.compact()
    assert small.bert.encoder.layer[1].intermediate.dense.out_features == 64


# ---- the command line ----------------------------------------------------------------------------

def test_prune_command_one_shot_and_with_training(tmp_path, capsys) -> None:
    from costplan.cli import main

    (tmp_path / "net.py").write_text(
        "import torch\n"
        "from tests.conftest import SmallCNN\n"
        "def build():\n    torch.manual_seed(0)\n    return SmallCNN(), torch.zeros(2, 3, 8, 8)\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n"
        "    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))"
        " for _ in range(3)]\n")
    plan = tmp_path / "plan.json"
    plan.write_text('{"layers": {"conv2": {"sparsity": 0.5, "pattern": "channel"}, '
                    '"conv3": {"sparsity": 0.5, "pattern": "channel"}}}')
    model = f"{tmp_path / 'net.py'}:build"
    out = tmp_path / "small.pt"
    assert main(["prune", model, "--plan", str(plan), "-o", str(out)]) == 0
    small = costplan.load(out, trust_code=True)
    assert small.conv2.out_channels == 16 and small.dw.groups == 16
    said = capsys.readouterr().out
    assert "in one shot, without training: 1 channel/head group(s) cut out, 0 weight tensor(s)" in said
    assert "until it is fine-tuned" in said and "--train FILE.py:FUNCTION" in said      # and how to
    data = f"{tmp_path / 'net.py'}:data"
    assert main(["prune", model, "--plan", str(plan), "-o", str(out), "--train", data, "--eval", data,
                 "--steps", "8", "--report-every", "4", "--criterion", "taylor"]) == 0
    assert costplan.load(out, trust_code=True).conv3.in_channels == 16
    said = capsys.readouterr().out        # not a terminal: plain lines, one every 4 steps
    assert "step 4/8: train loss" in said and "step 8/8: train loss" in said and "schedule at 100%" in said
    assert said.count("eval loss") == 4 and "accuracy" in said and "fine-tuned" not in said
    assert main(["prune", model, "--plan", str(plan), "-o", str(out), "--criterion", "taylor"]) == 2


def test_a_layer_that_reads_and_writes_its_own_group() -> None:
    torch.manual_seed(0)
    model = randomise_norms(SmallCNN())
    plan = small_plan("channel", 0.5)
    small = compare(model, plan, {"x": torch.randn(2, 3, 8, 8)}, input="1x3x8x8")
    assert (small.conv3.in_channels, small.conv3.out_channels, small.fc.in_features) == (16, 16, 16)


def test_evaluation_reads_accuracy_off_the_losss_own_forward_pass() -> None:
    """Loss and accuracy from one forward pass per batch; accuracy counted by hand."""
    from costplan.pruning.loop import evaluate

    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))            # the output is the input: class = larger coordinate
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(1))
    batches = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])),
               (torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 1]))]
    result = evaluate(model, batches)
    assert len(calls) == 2 and result.samples == 4
    assert result.accuracy == pytest.approx(3 / 4)
    expected = sum(float(torch.nn.functional.cross_entropy(x, y)) * len(y) for x, y in batches) / 4
    assert result.loss == pytest.approx(expected)
