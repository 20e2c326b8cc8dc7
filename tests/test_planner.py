"""The static memory planner, tested three ways (STYLE.md item 5):

1. tiny hand-worked cases with exact offsets and peaks (the reasoning is in the comments);
2. one invariant checker (`invariants`) run on every case, including random ones from hypothesis, with
   two independent oracles: a brute-force first-fit reference and a run inside a real byte arena;
3. the budget check's message, and corrupted plans caught by `check()`.
"""
import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from device.planner import (BudgetError, Buffer, Plan, check, check_budget, format_plan, live_at, live_bytes_timeline,
                            peak_step, plan_greedy, plan_naive)


def bufs(*specs, region="sram", align=16):
    """Buffers from (name, size, first, last) tuples."""
    return [Buffer(name, size, first, last, region=region, align=align) for name, size, first, last in specs]


def run_in_arena(plan: Plan) -> list[str]:
    """Execute the plan's lifetimes in one array per region: at each step every buffer that starts
    writes its id over its bytes, then every live buffer checks its bytes still hold its id.
    Returns the names of clobbered buffers (a wrong plan corrupts data, as in the simulator)."""
    arenas = {r: np.zeros(p, np.int32) for r, p in plan.peak.items()}  # one element per byte
    ids = {b.name: i + 1 for i, b in enumerate(plan.buffers)}
    clobbered = []
    for step in range(max((b.last + 1 for b in plan.buffers), default=0)):
        for b in plan.buffers:
            if b.first == step:
                arenas[b.region][plan.offsets[b.name]:plan.offsets[b.name] + b.size] = ids[b.name]
        for b in plan.buffers:
            view = arenas[b.region][plan.offsets[b.name]:plan.offsets[b.name] + b.size]
            if b.first <= step <= b.last and b.name not in clobbered and np.any(view != ids[b.name]):
                clobbered.append(b.name)
    return clobbered


def first_fit_reference(buffers) -> dict[str, int]:
    """Brute force: in greedy order, try offsets 0, align, 2*align ... until nothing live overlaps."""
    offsets, placed = {}, []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        off = 0
        while b.size and any(p.region == b.region and p.first <= b.last and b.first <= p.last
                             and offsets[p.name] < off + b.size and off < offsets[p.name] + p.size for p in placed):
            off += b.align
        offsets[b.name] = off
        placed.append(b)
    return offsets


def invariants(buffers) -> tuple[Plan, Plan]:
    """Everything that must hold for any input; returns (greedy, naive)."""
    greedy, naive = plan_greedy(buffers), plan_naive(buffers)
    for plan in (greedy, naive):
        check(plan)
        assert run_in_arena(plan) == []
        assert all(plan.offsets[b.name] % b.align == 0 for b in buffers)
    assert greedy.offsets == first_fit_reference(buffers)
    assert set(greedy.peak) == set(naive.peak) == {b.region for b in buffers}
    for region in greedy.peak:
        assert greedy.peak[region] <= naive.peak[region]
        assert greedy.peak[region] >= max(live_bytes_timeline(greedy, region))
    return greedy, naive


# 1. Hand-worked cases ---------------------------------------------------------------------------------

CHAIN = (("a", 100, 0, 1), ("b", 50, 1, 2), ("c", 80, 2, 3))


def test_chain_align_1():
    # Greedy order by size: a(100), c(80), b(50). a -> 0. c (steps 2..3) is never live with a (0..1) -> 0.
    # b (1..2) is live with a [0,100) and c [0,80): first byte free of both is 100. Peak 100 + 50 = 150,
    # equal to the live-bytes bound (step 1: a + b = 150), so optimal. Naive: a 0, c 100, b 180 -> 230.
    greedy, naive = invariants(bufs(*CHAIN, align=1))
    assert greedy.offsets == {"a": 0, "b": 100, "c": 0} and greedy.peak == {"sram": 150}
    assert naive.offsets == {"a": 0, "c": 100, "b": 180} and naive.peak == {"sram": 230}
    assert live_bytes_timeline(greedy, "sram") == [100, 150, 130, 80]


def test_chain_align_16():
    # Same placement, but b starts at 100 rounded up to 16 = 112: peak 112 + 50 = 162 (12 bytes padding).
    # Naive: a 0, c at 100 -> 112 (ends 192), b at 192 (aligned already) -> 242.
    greedy, naive = invariants(bufs(*CHAIN, align=16))
    assert greedy.offsets == {"a": 0, "b": 112, "c": 0} and greedy.peak == {"sram": 162}
    assert naive.offsets == {"a": 0, "c": 112, "b": 192} and naive.peak == {"sram": 242}


def test_greedy_reuses_a_freed_slot_and_beats_naive():
    # x (96 B, steps 0..1) dies before z (64 B, 2..3) is born, so z takes x's bytes at 0.
    # y (32 B, 0..3) is live with both -> after the larger, x: 96. Peak 128 = live bound (step 0: 96 + 32).
    # Naive: 96 + 64 + 32 = 192.
    greedy, naive = invariants(bufs(("x", 96, 0, 1), ("y", 32, 0, 3), ("z", 64, 2, 3)))
    assert greedy.offsets == {"x": 0, "y": 96, "z": 0} and greedy.peak == {"sram": 128}
    assert naive.peak == {"sram": 192}


GAP = (("p", 128, 0, 0), ("q", 96, 0, 3), ("r", 80, 1, 3), ("s", 32, 2, 3))


def test_greedy_fills_a_hole_between_two_buffers():
    # p -> 0. q (live with p) -> 128. r (1..3) is live with q only, fits below it: 0 + 80 <= 128 -> 0.
    # s (2..3) is live with r [0,80) and q [128,224): candidate 0 hits r -> 80; 80 + 32 = 112 <= 128 fits.
    # Peak 224 = live bound at step 0 (p + q). Naive: 128 + 96 + 80 + 32 = 336.
    greedy, naive = invariants(bufs(*GAP))
    assert greedy.offsets == {"p": 0, "q": 128, "r": 0, "s": 80} and greedy.peak == {"sram": 224}
    assert naive.peak == {"sram": 336}
    assert live_bytes_timeline(greedy, "sram") == [224, 176, 208, 208]
    assert [b.name for b in live_at(greedy, 2, "sram")] == ["q", "r", "s"]
    step, live = peak_step(greedy, "sram")
    assert step == 0 and [b.name for b in live] == ["p", "q"]


def test_ties_break_by_first_step_then_name():
    # All 64 B: order b (first 0), c (first 1), a (first 2). b -> 0; c live with b -> 64;
    # a (2..3) is live with c only -> 0 (b died at step 1). Peak 128.
    greedy, _ = invariants(bufs(("a", 64, 2, 3), ("b", 64, 0, 1), ("c", 64, 1, 2)))
    assert greedy.offsets == {"a": 0, "b": 0, "c": 64} and greedy.peak == {"sram": 128}


def test_regions_are_planned_independently():
    # sram: a [0,100), c live with a -> 100, peak 150. dram: b alone -> 0, peak 200, though live with a.
    mixed = bufs(("a", 100, 0, 1), ("c", 50, 1, 1), align=1) + bufs(("b", 200, 0, 1), region="dram", align=1)
    greedy, naive = invariants(mixed)
    assert greedy.offsets == {"a": 0, "c": 100, "b": 0} and greedy.peak == {"sram": 150, "dram": 200}
    assert plan_greedy(mixed[:2]).offsets == {"a": 0, "c": 100}


def test_zero_size_buffers_take_no_space():
    # Size 0 -> offset 0, overlaps nothing, adds nothing to either peak; a region of only empties has peak 0.
    buffers = bufs(("z", 0, 0, 3), ("a", 64, 0, 3), ("y", 0, 1, 1), align=32) + bufs(("e", 0, 0, 0), region="flash")
    greedy, naive = invariants(buffers)
    assert greedy.offsets == naive.offsets == {"z": 0, "a": 0, "y": 0, "e": 0}
    assert greedy.peak == naive.peak == {"sram": 64, "flash": 0}


def test_empty_input():
    plan = plan_greedy([])
    check(plan)
    assert plan.peak == {} and plan.offsets == {} and peak_step(plan, "sram") == (0, [])
    check_budget(plan, {"sram": 0})


def test_plan_does_not_depend_on_input_order():
    buffers = bufs(*GAP)
    assert plan_greedy(buffers[::-1]).offsets == plan_greedy(buffers).offsets


@pytest.mark.parametrize("bad, message", [
    (Buffer("neg", -1, 0, 1), "'neg'"),
    (Buffer("back", 8, 3, 2), "'back'"),
    (Buffer("before0", 8, -1, 2), "'before0'"),
    (Buffer("odd", 8, 0, 1, align=12), "'odd'"),
    (Buffer("zero_align", 8, 0, 1, align=0), "'zero_align'"),
    (Buffer("a", 8, 0, 1), "duplicate buffer name 'a'"),
])
def test_bad_buffers_are_refused_by_name(bad, message):
    for planner in (plan_greedy, plan_naive):
        with pytest.raises(ValueError, match=message):
            planner([Buffer("a", 8, 0, 1), bad])


def test_format_plan_draws_each_buffer_across_the_arena():
    # Arena 224 B over 28 columns = 8 B a column: p [0,128) -> columns 0..15, q [128,224) -> 16..27,
    # r [0,80) -> 0..9, s [80,112) -> 10..13. Rows are sorted by offset.
    text = format_plan(plan_greedy(bufs(*GAP)), "sram", width=28)
    lines = text.splitlines()
    assert "224 bytes" in lines[0] and "8.0 bytes" in lines[0]
    bars = {line.split()[0]: line.split("|")[1] for line in lines[2:]}
    assert [line.split()[0] for line in lines[2:]] == ["p", "r", "s", "q"]
    assert bars == {"p": "#" * 16 + "." * 12, "q": "." * 16 + "#" * 12,
                    "r": "#" * 10 + "." * 18, "s": "." * 10 + "#" * 4 + "." * 14}
    assert "0..0" in text and "2..3" in text


# 2. Random cases: the same invariants ----------------------------------------------------------------

@st.composite
def random_buffers(draw):
    n = draw(st.integers(0, 14))
    out = []
    for i in range(n):
        first = draw(st.integers(0, 12))
        out.append(Buffer(f"t{i}", draw(st.integers(0, 300)), first, first + draw(st.integers(0, 6)),
                          region=draw(st.sampled_from(["sram", "dram", "flash"])),
                          align=draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64]))))
    return out


@settings(max_examples=300, deadline=None)
@given(random_buffers())
def test_random_plans_keep_every_invariant(buffers):
    greedy, _ = invariants(buffers)
    shuffled = list(buffers)
    random.Random(0).shuffle(shuffled)
    assert plan_greedy(shuffled).offsets == greedy.offsets


def test_mixed_alignment_greedy_still_beats_naive():
    # Both live together: greedy places big (17 B, align 1) at 0, small (16 B, align 16) at 32 -> 48.
    # Naive uses the same order, so it pads the same: 48, never less than greedy.
    buffers = [Buffer("big", 17, 0, 1, align=1), Buffer("small", 16, 0, 1, align=16)]
    greedy, naive = invariants(buffers)
    assert greedy.offsets == {"big": 0, "small": 32} and greedy.peak == naive.peak == {"sram": 48}


# 3. Budgets and corrupted plans ----------------------------------------------------------------------

KB = 1024


def mcu_buffers():
    return [
        Buffer("blocks.3.depthwise.out", 160 * KB, 3, 5, kind="activation", layer="blocks.3.depthwise"),
        Buffer("blocks.3.project.saved", 96 * KB, 2, 8, kind="saved", layer="blocks.3.project"),
        Buffer("blocks.3.relu.mask", 12 * KB, 3, 8, kind="mask", layer="blocks.3.relu"),
        Buffer("head.bias.grad", 400, 8, 9, kind="grad", layer="head"),
        Buffer("im2col", 64 * KB, 0, 1, kind="scratch", layer="stem"),
        Buffer("lite.weights", 300 * KB, 0, 9, region="flash", kind="weights", layer="lite"),
    ]


def test_check_budget_names_the_peak_budget_overshoot_and_largest_live_buffer():
    plan = plan_greedy(mcu_buffers())
    check(plan)
    # Steps 3..5: 160 + 96 + 12 KB live = 268 KB; the arena is exactly that (every size is 16-aligned).
    peak = plan.peak["sram"]
    assert peak == 268 * KB
    budget = 256 * KB
    with pytest.raises(BudgetError) as err:
        check_budget(plan, {"sram": budget, "flash": 1024 * KB})
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    for needle in (f"peak {peak} bytes", f"budget {budget} bytes", f"over by {peak - budget} bytes", "(12.0 KB)",
                   "blocks.3.depthwise.out", "layer blocks.3.depthwise", "live at step 3"):
        assert needle in msg, (needle, msg)
    assert msg.index("blocks.3.depthwise.out") < msg.index("blocks.3.project.saved") < msg.index("blocks.3.relu.mask")
    assert "im2col" not in msg and "flash" not in msg  # not live at the peak step; flash fits


def test_check_budget_passes_under_and_at_budget_and_lists_every_region_over():
    plan = plan_greedy(mcu_buffers())
    check_budget(plan, {"sram": 268 * KB, "flash": 300 * KB})
    check_budget(plan, {"sram": 320 * KB, "flash": 1024 * KB, "dram": 0})
    with pytest.raises(BudgetError, match="(?s)'sram'.*'flash'"):
        check_budget(plan, {"sram": 100 * KB, "flash": 100 * KB})
    with pytest.raises(BudgetError, match="no 'flash' budget"):
        check_budget(plan, {"sram": 320 * KB})


def corrupt(plan: Plan, **offsets) -> Plan:
    return replace(plan, offsets={**plan.offsets, **offsets})


def test_check_catches_two_live_buffers_overlapping():
    plan = plan_greedy(bufs(*GAP))
    check(plan)  # p, r (and p, s) share bytes legally: never live together
    bad = corrupt(plan, s=64)  # s [64,96) now overlaps r [0,80) while both live at steps 2..3
    with pytest.raises(AssertionError, match=r"'r' and 's' overlap in region 'sram': bytes \[64, 80\)"):
        check(bad)
    assert run_in_arena(bad) == ["r"]  # and the run sees it: s overwrote r's bytes


def test_check_catches_misaligned_missing_extra_and_wrong_peak():
    plan = plan_greedy(bufs(*GAP))
    with pytest.raises(AssertionError, match="'s'.*offset 88 is not a multiple of align 16"):
        check(corrupt(plan, s=88))
    with pytest.raises(AssertionError, match="'q'.*missing"):
        check(replace(plan, offsets={k: v for k, v in plan.offsets.items() if k != "q"}))
    with pytest.raises(AssertionError, match="not in the plan: \\['ghost'\\]"):
        check(corrupt(plan, ghost=0))
    with pytest.raises(AssertionError, match="peak 200"):
        check(replace(plan, peak={"sram": 200}))
