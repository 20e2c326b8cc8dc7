import math

import pytest
import torch

from train.errors import UserError
from train.memory import (MB, PAPER_PROXYLESS_MB, estimate, estimate_all, format_table, layer_table, saved_bytes)
from train.methods import METHODS, apply_method, set_adapt_mode
from train.models import ModelSpec, build_model, insert_lite_residual, load_spec


@pytest.fixture(scope="module")
def proxyless_rows():
    """{batch: estimate_all rows} for the paper's setting: ProxylessNAS-Mobile + lite branches, 224 px, 102 classes."""
    model = build_model(load_spec("proxylessnas-mobile", num_classes=102))
    insert_lite_residual(model)
    return {b: {r.method: r for r in estimate_all(model, 224, b)} for b in (1, 8)}


def test_proxylessnas_matches_the_paper_within_10_percent(proxyless_rows):
    rows = proxyless_rows[8]
    assert list(rows) == list(METHODS)
    got = {m: r.total_bytes / MB for m, r in rows.items()}
    report = ", ".join(f"{m} {got[m]:.1f} MB vs paper {PAPER_PROXYLESS_MB[m]}" for m in METHODS)
    for m in METHODS:
        assert abs(got[m] / PAPER_PROXYLESS_MB[m] - 1) < 0.10, report


def test_activations_order_and_scale_with_batch(proxyless_rows):
    one, eight = proxyless_rows[1], proxyless_rows[8]
    act = {m: r.activation_bytes for m, r in one.items()}
    assert act["ft-last"] < act["tinytl-b"] < act["ft-norm-last"] < act["ft-full"], act
    for m in METHODS:
        assert eight[m].activation_bytes == 8 * one[m].activation_bytes
        assert eight[m].param_bytes == one[m].param_bytes
        assert eight[m].peak_layer == one[m].peak_layer


def _tiny() -> torch.nn.Module:
    spec = ModelSpec.from_dict({"name": "tiny", "resolution": 8, "in_channels": 1, "num_classes": 2, "stem_channels": 8,
                                "stem_stride": 1, "stages": [{"stride": 1, "channels": [8, 8], "kernels": [3, 3],
                                                              "expansions": [1, 2]}]})
    model = build_model(spec)
    insert_lite_residual(model)  # block 1 only: pool 2x2 -> 5x5 group conv 8->8 -> GN -> ReLU -> 1x1 8->8 -> GN -> upsample
    return model


def test_hand_worked_tiny_network():
    # 1x8x8 input, every map 8x8 (stride 1), both blocks have identity shortcuts, no head conv.
    # Bytes at batch 1 (x4): input 256; 8-ch map 2048; 16-ch map 4096; lite map (8 ch, 4x4) 512; pooled vector 32.
    # Params: stem 72+16, block 0: dw 72+16, proj 64+16, block 1: exp 128+32, dw 144+32, proj 128+16,
    #   lite: conv1 8*(8/2)*25=800, GN 16, conv2 64, GN 16, classifier 8*2+2=18 -> 1650 in all.
    # Walk (current = saved before + transient + shortcut input 2048 inside either block):
    #   stem.conv 256+2048; block 0: dw conv 4096 (+2048), proj conv 4096 (+2048), add y 2048 (+2048);
    #   block 1: expand 2048+4096, dw conv 4096+4096 = 8192 (+2048) <- the largest transient,
    #   proj 4096+2048, lite pool 2048+512, conv1/conv2 512+512, upsample 512+2048, lite add 2048+2048,
    #   shortcut add 2048; mean 2048+32; classifier 32+8.
    model = _tiny()
    # ft-last: only the classifier trains (18 params x 4 B, 1632 x 1 B); it saves its 32-B input, nothing
    # upstream trains so no ReLU masks; peak = block 1's depthwise conv: 8192 + 2048 shortcut = 10240.
    e = estimate(model, "ft-last", 8, 2)
    assert (e.trainable_params, e.param_bytes, e.activation_bytes, e.peak_layer) == (18, 72 + 1632, 2 * 10240,
                                                                                     "blocks.1.depthwise.conv")
    assert saved_bytes(model, "ft-last", 8) == {"conv": 0, "norm": 0, "relu": 0, "pool": 0, "add": 0, "upsample": 0,
                                                "linear": 32}
    # tinytl-b: BN shifts 8+8+8+16+16+8 = 64 plus the classifier train (82 x 4 B, 1568 x 1 B). The stem BN's shift
    # trains, so every ReLU after it saves a 1-bit mask: stem 512/8=64, block 0 dw 64, block 1 expand 128, dw 128,
    # lite ReLU 128/8=16 -> 400 B saved before block 1's depthwise conv is 64+64+128 = 256:
    # peak = 256 + 8192 + 2048 = 10496.
    e = estimate(model, "tinytl-b", 8, 1)
    assert (e.trainable_params, e.param_bytes, e.activation_bytes, e.peak_layer) == (82, 328 + 1568, 10496,
                                                                                     "blocks.1.depthwise.conv")
    assert saved_bytes(model, "tinytl-b", 8)["relu"] == 400
    # ft-full: all 1650 params train (x 4 B); every conv/norm saves its input, every ReLU a mask. Saved by the end of
    # block 1's main branch: stem 256+2048+64, block 0 2048+2048+64 + 2048+2048, block 1 2048+4096+128 +
    # 4096+4096+128 + 4096+2048 = 31360; lite conv1 512, GN 512, mask 16, conv2 512, GN 512 -> 33424. Peak at the lite
    # add: 33424 + operands 2048+2048 + shortcut 2048 = 39568 (the mean only reaches 33424 + 2048+32).
    e = estimate(model, "ft-full", 8, 1)
    assert (e.trainable_params, e.param_bytes, e.activation_bytes, e.peak_layer) == (1650, 6600, 39568, "blocks.1.add")


def test_layer_table_marks_the_peak_and_format_table_has_units():
    model = _tiny()
    table = layer_table(model, "tinytl-b", 8)
    peak_line = next(line for line in table.splitlines() if line.endswith("<- peak"))
    assert peak_line.startswith("blocks.1.depthwise.conv") and "10,496" in peak_line
    text = format_table(estimate_all(model, 8, 1), title="tiny")
    assert "MB = 10^6 bytes" in text and text.count("\n| ") == 1 + len(METHODS)


def test_estimate_leaves_the_model_as_it_was():
    model = _tiny().train()
    apply_method(model, "tinytl-b")
    grads = [p.requires_grad for p in model.parameters()]
    estimate(model, "ft-full", 8, 1)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_input_is_a_user_error():
    model = _tiny()
    with pytest.raises(UserError):
        estimate(model, "ft-everything", 8, 1)
    with pytest.raises(UserError):
        estimate(model, "ft-last", 8, 0)
    with pytest.raises(UserError):
        estimate(build_model(load_spec("mcunet-tiny")), "tinytl-l", 32, 1)  # no lite branches to train


# --- against what autograd really saves ---------------------------------------------------------------------------

def _autograd_saved(model, method: str, x: torch.Tensor) -> tuple[int, dict[str, dict[int, int]]]:
    """(bytes of the distinct tensors autograd saves, {category: {storage ptr: bytes}}) for one forward.

    Parameters and buffers (BN running stats) are model state, not activations: left out. Every saved tensor is
    put in one category from the graph node that saved it (one node per op, reached from the output).
    """
    apply_method(model, method)
    set_adapt_mode(model, True)  # BatchNorm in eval mode
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    packed: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in state:
            packed[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    cats: dict[str, dict[int, int]] = {}
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [f for f, _ in node.next_functions]
        kind = type(node).__name__
        weight = getattr(node, "_saved_weight", None)
        for attr in (a for a in dir(node) if a.startswith("_saved_")):
            t = getattr(node, attr)
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in state:
                continue
            if attr in ("_saved_input", "_saved_mat1"):
                # the classifier (addmm) trains in every method; conv/norm inputs count when the weight trains
                cat = "input, weight trains" if kind == "AddmmBackward0" or weight.requires_grad else "input, weight frozen"
            elif kind in ("HardtanhBackward0", "ReluBackward0"):
                cat = "relu float"
            else:
                cat = f"{kind}{attr}"  # GroupNorm mean/rstd, avg-pool input, BN-eval's empty stats
            cats.setdefault(cat, {})[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
    return sum(packed.values()), cats


def test_estimator_matches_autograd_up_to_the_papers_rule_differences():
    torch.manual_seed(0)
    model = build_model(load_spec("mcunet-tiny"))
    insert_lite_residual(model)
    assert model.classifier.weight.requires_grad
    x = torch.randn(1, 1, 32, 32)
    total, est, masks = {}, {}, {}
    for method in METHODS:
        total[method], cats = _autograd_saved(model, method, x)
        rule = saved_bytes(model, method, 32)
        est[method], masks[method] = sum(rule.values()), rule["relu"]
        numbers = f"{method}: autograd {total[method]} B, estimator {est[method]} B, by category " + \
                  str({c: sum(v.values()) for c, v in cats.items()})
        # 1. Every tensor autograd saves comes from a node we categorised (nothing unexplained).
        assert total[method] == sum(b for b in {p: b for c in cats.values() for p, b in c.items()}.values()), numbers
        assert set(cats) <= {"input, weight trains", "input, weight frozen", "relu float", "NativeGroupNormBackward0_saved_result1",
                             "NativeGroupNormBackward0_saved_result2", "AvgPool2DBackward0_saved_self",
                             "NativeBatchNormBackward0_saved_result1", "NativeBatchNormBackward0_saved_result2"}, numbers
        # 2. The rule "a conv/linear/norm saves its input only if its weight trains" picks exactly the tensors autograd
        #    saves at those layers (distinct tensors, so the estimator counts none twice).
        assert rule["conv"] + rule["linear"] + rule["norm"] == sum(cats.get("input, weight trains", {}).values()), numbers
        # 3. "A ReLU saves a mask when anything earlier trains" is autograd's own choice: it builds a ReLU node exactly
        #    where gradients flow; the paper keeps 1 bit per element where autograd keeps 32.
        relu_float = cats.get("relu float", {})
        assert masks[method] == sum(math.ceil(b / 4 / 8) for b in relu_float.values()), numbers
        # 4. Hence the estimator never exceeds autograd.
        assert est[method] <= total[method], numbers
        print(numbers)
    # 5. FT-Last: nothing but the classifier's input (160 floats) on both sides.
    assert est["ft-last"] == total["ft-last"] == 160 * 4
    # 6. FT-Full: every input is saved on both sides; autograd additionally keeps a float copy of each ReLU6 input
    #    (in-place hardtanh_ needs the original for its gradient, so it clones it) where the paper keeps a 1-bit mask,
    #    and GroupNorm's per-group mean/rstd. ReLU outputs and pool inputs are tensors already saved as conv inputs.
    _, cats = _autograd_saved(model, "ft-full", x)
    kept = cats["input, weight trains"]
    extra = {p: b for c, v in cats.items() if c != "input, weight trains" for p, b in v.items() if p not in kept}
    relu6_copies = sum(b for p, b in cats["relu float"].items() if p not in kept)
    gn_stats = sum(cats["NativeGroupNormBackward0_saved_result1"].values()) + \
        sum(cats["NativeGroupNormBackward0_saved_result2"].values())
    assert sum(extra.values()) == relu6_copies + gn_stats
    assert total["ft-full"] == est["ft-full"] - masks["ft-full"] + relu6_copies + gn_stats
    # 7. Stock autograd does not exploit a frozen weight: a conv saves its input and a BN (eval) its input whenever
    #    gradients flow through them, so TinyTL-B keeps as much as FT-Norm+Last there, while the paper's rule (what
    #    backward actually needs for a bias) keeps only masks and the classifier input: over 30x less.
    assert total["tinytl-b"] == total["ft-norm-last"]
    assert est["tinytl-b"] == masks["tinytl-b"] + 160 * 4
    assert 30 * est["tinytl-b"] < est["ft-norm-last"]
