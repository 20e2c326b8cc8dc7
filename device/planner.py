"""Static memory planning: every buffer of the update step gets a byte offset in its region's arena.

A Buffer is plain data: (size, first step, last step, region). A planner is a pure function
`buffers -> Plan(offsets, peak per region)`; the simulator then preallocates one byte arena per region
(`peak[region]` bytes, base aligned to the largest `align`) and makes every tensor a view at its offset,
so a wrong plan corrupts results. Two planners share one signature, after TFLite Micro:

  plan_greedy  GreedyMemoryPlanner: buffers whose lifetimes do not intersect may share bytes.
  plan_naive   LinearMemoryPlanner: every buffer gets its own bytes, the baseline.

`check(plan)` is the invariant checker, `check_budget(plan, budgets)` refuses a plan before the first step,
`format_plan(plan)` draws the arena. Lifetimes are inclusive step (op index) ranges; sizes are bytes;
1 KB = 1024 bytes (as in an MCU datasheet's "320 KB SRAM").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KB = 1024  # bytes


@dataclass(frozen=True)
class Buffer:
    name: str                 # unique, e.g. "blocks.3.depthwise.out"
    size: int                 # bytes; 0 is allowed and takes no space
    first: int                # first step (op index) that uses it, inclusive
    last: int                 # last step that uses it, inclusive
    region: str = "sram"      # which arena: "sram", "dram", "flash" ...
    kind: str = "activation"  # activation | saved | mask | grad | optimizer | param | scratch | weights
    layer: str = ""           # the layer it belongs to, for error messages
    align: int = 16           # offset alignment in bytes, a power of 2


@dataclass(frozen=True)
class Plan:
    offsets: dict[str, int]   # buffer name -> byte offset in its region's arena
    peak: dict[str, int]      # region -> arena bytes needed (max offset + size over its buffers)
    buffers: tuple[Buffer, ...]


class BudgetError(ValueError):
    """A plan whose arena does not fit a region's budget; the message says by how much and what is live."""


def _align_up(x: int, align: int) -> int:
    return -(-x // align) * align


def _live_together(a: Buffer, b: Buffer) -> bool:
    return a.first <= b.last and b.first <= a.last


def _placement_key(b: Buffer) -> tuple:
    return (-b.size, b.first, b.name)  # largest first; ties: earlier first, then name (a total order)


def _validate(buffers: Sequence[Buffer]) -> tuple[Buffer, ...]:
    seen: set[str] = set()
    for b in buffers:
        if not isinstance(b, Buffer):
            raise TypeError(f"expected a Buffer, got {type(b).__name__}: {b!r}")
        where = f"buffer {b.name!r}" + (f" (layer {b.layer})" if b.layer else "")
        if not b.name:
            raise ValueError(f"a buffer has an empty name: {b!r}")
        if b.name in seen:
            raise ValueError(f"duplicate buffer name {b.name!r}")
        seen.add(b.name)
        if b.size < 0:
            raise ValueError(f"{where}: size {b.size} < 0 bytes")
        if b.first < 0 or b.last < b.first:
            raise ValueError(f"{where}: lifetime steps {b.first}..{b.last} needs 0 <= first <= last")
        if b.align < 1 or b.align & (b.align - 1):
            raise ValueError(f"{where}: align {b.align} is not a power of 2")
    return tuple(buffers)


def _by_region(buffers: Sequence[Buffer]) -> dict[str, list[Buffer]]:
    groups: dict[str, list[Buffer]] = {}
    for b in buffers:
        groups.setdefault(b.region, []).append(b)
    return groups


def _make_plan(buffers: tuple[Buffer, ...], offsets: dict[str, int]) -> Plan:
    peak = {r: max(offsets[b.name] + b.size for b in group) for r, group in _by_region(buffers).items()}
    return Plan(offsets={b.name: offsets[b.name] for b in buffers}, peak=peak, buffers=buffers)


def plan_greedy(buffers: Sequence[Buffer]) -> Plan:
    """TFLite Micro's greedy planner: reuse the bytes of buffers that are not live at the same time.

    Per region, independently:
      1. Sort the buffers by decreasing size (ties: earlier first step, then name), so big buffers get
         the low offsets and small ones fill the holes; the order is total, so the plan does not depend
         on the input order.
      2. For each buffer in that order, collect the already-placed buffers whose lifetimes intersect
         its own (the only ones it may not overlap), sorted by offset.
      3. Walk them from offset 0 upwards: the candidate offset starts at 0; if the buffer fits below the
         next conflicting one, take the candidate; else move it to that one's end, aligned up.
         The result is the lowest aligned offset where the buffer overlaps nothing live with it.
      4. Size-0 buffers take no space: offset 0, no conflicts.
    Peak per region = max(offset + size). It is >= the live-bytes lower bound (`live_bytes_timeline`),
    and <= `plan_naive`'s peak: by induction each buffer ends no later than in the naive plan, which
    places the same order one after another. O(n^2) per region, fine for thousands of buffers.
    """
    bufs = _validate(buffers)
    offsets: dict[str, int] = {}
    for group in _by_region(bufs).values():
        placed: list[tuple[int, int, Buffer]] = []  # (offset, end) in bytes, buffer; size > 0 only
        for b in sorted(group, key=_placement_key):
            if b.size == 0:
                offsets[b.name] = 0
                continue
            offset = 0
            for start, end, _ in sorted((p for p in placed if _live_together(p[2], b)), key=lambda p: p[:2]):
                if offset + b.size <= start:
                    break  # fits in the hole below this one; the rest start even higher
                offset = max(offset, _align_up(end, b.align))
            offsets[b.name] = offset
            placed.append((offset, offset + b.size, b))
    return _make_plan(bufs, offsets)


def plan_naive(buffers: Sequence[Buffer]) -> Plan:
    """TFLite Micro's linear planner, the baseline: no reuse at all.

    Per region: take the buffers in the greedy planner's order (decreasing size, then first step, then
    name) and put each right after the previous one, aligned up. Peak = the sum of sizes plus alignment
    padding. The shared order keeps the padding comparable, so greedy peak <= naive peak holds even
    with mixed alignments (in input order a 17-byte buffer before a 16-aligned one could pad less).
    Size-0 buffers get offset 0 and do not move the cursor.
    """
    bufs = _validate(buffers)
    offsets: dict[str, int] = {}
    for group in _by_region(bufs).values():
        cursor = 0  # bytes: end of the last placed buffer
        for b in sorted(group, key=_placement_key):
            if b.size == 0:
                offsets[b.name] = 0
                continue
            offsets[b.name] = _align_up(cursor, b.align)
            cursor = offsets[b.name] + b.size
    return _make_plan(bufs, offsets)


def live_at(plan: Plan, step: int, region: str) -> list[Buffer]:
    """Buffers of `region` live at `step` (first <= step <= last), in plan order; size-0 ones included."""
    return [b for b in plan.buffers if b.region == region and b.first <= step <= b.last]


def live_bytes_timeline(plan: Plan, region: str) -> list[int]:
    """Bytes live in `region` at each step 0..(last step of any buffer in the plan).

    Its max is the lower bound of any plan of these lifetimes (ignoring alignment): at that step all
    those buffers exist at once, in disjoint bytes. Steps span the whole plan, so regions line up.
    """
    n_steps = max((b.last + 1 for b in plan.buffers), default=0)
    delta = [0] * (n_steps + 1)  # difference array: +size at first, -size after last
    for b in plan.buffers:
        if b.region == region:
            delta[b.first] += b.size
            delta[b.last + 1] -= b.size
    timeline, live = [], 0
    for d in delta[:n_steps]:
        live += d
        timeline.append(live)
    return timeline


def _largest_first(buffers: list[Buffer]) -> list[Buffer]:
    return sorted(buffers, key=lambda b: (-b.size, b.name))


def peak_step(plan: Plan, region: str) -> tuple[int, list[Buffer]]:
    """The earliest step with the most live bytes in `region`, and the buffers live there, largest first."""
    timeline = live_bytes_timeline(plan, region)
    if not timeline:
        return 0, []
    step = timeline.index(max(timeline))
    return step, _largest_first(live_at(plan, step, region))


def _describe(b: Buffer, plan: Plan) -> str:
    layer = f", layer {b.layer}" if b.layer else ""
    return (f"{b.name!r} ({b.kind}{layer}, offset {plan.offsets.get(b.name)}, {b.size} bytes, "
            f"steps {b.first}..{b.last})")


def check(plan: Plan) -> None:
    """The invariant checker; raises AssertionError naming the buffer(s) at fault.

      1. Every buffer has exactly one offset and every offset belongs to a buffer.
      2. Every offset is >= 0 and a multiple of its buffer's `align`.
      3. No two buffers of one region that are live at a common step share a byte: sort by offset, and
         compare each buffer only with those that start before it ends.
      4. `peak[region]` is exactly max(offset + size) over the region (an arena that size holds them all).
    Explicit raises, not `assert`, so `python -O` does not skip it.
    """
    names = [b.name for b in plan.buffers]
    if len(set(names)) != len(names):
        raise AssertionError(f"duplicate buffer names in plan: {sorted({n for n in names if names.count(n) > 1})}")
    for b in plan.buffers:
        if b.name not in plan.offsets:
            raise AssertionError(f"buffer {_describe(b, plan)} is missing from the plan's offsets")
        off = plan.offsets[b.name]
        if off < 0 or off % b.align:
            raise AssertionError(f"buffer {_describe(b, plan)}: offset {off} is not a multiple of align {b.align}")
    extra = set(plan.offsets) - set(names)
    if extra:
        raise AssertionError(f"offsets for buffers not in the plan: {sorted(extra)}")
    for region, group in _by_region(plan.buffers).items():
        spans = sorted((plan.offsets[b.name], plan.offsets[b.name] + b.size, b.name, b) for b in group if b.size)
        for i, (start, end, _, a) in enumerate(spans):
            for start2, end2, _, b in spans[i + 1:]:
                if start2 >= end:
                    break  # sorted by offset: no later buffer reaches into a's bytes
                if _live_together(a, b):
                    raise AssertionError(
                        f"buffers {a.name!r} and {b.name!r} overlap in region {region!r}: bytes "
                        f"[{max(start, start2)}, {min(end, end2)}) while both live at steps "
                        f"{max(a.first, b.first)}..{min(a.last, b.last)}; {_describe(a, plan)} vs {_describe(b, plan)}")
        need = max(plan.offsets[b.name] + b.size for b in group)
        if plan.peak.get(region) != need:
            raise AssertionError(f"region {region!r}: peak {plan.peak.get(region)} != max(offset + size) = {need} bytes")


def _bytes(n: int) -> str:
    return f"{n} bytes ({n / KB:.1f} KB)"


def check_budget(plan: Plan, budgets: dict[str, int], max_listed: int = 12) -> None:
    """Refuse a plan (before the first step) whose arena exceeds a region's budget, in bytes.

    Raises BudgetError listing, per region over budget: the planned peak, the budget, the overshoot
    (bytes and KB), and the buffers live at the step with the most live bytes, largest first, with
    their layer (at most `max_listed`; the rest are summed). A region that holds buffers but has no
    budget is an error too: a plan that uses an arena the target does not have cannot run.
    """
    problems = []
    for region, peak in plan.peak.items():
        budget = budgets.get(region)
        if budget is None:
            problems.append(f"region {region!r}: peak {_bytes(peak)} but the target has no {region!r} budget "
                            f"(budgets: {sorted(budgets)})")
            continue
        if peak <= budget:
            continue
        step, live = peak_step(plan, region)
        live_sum = sum(b.size for b in live)
        lines = [f"region {region!r}: peak {_bytes(peak)} > budget {_bytes(budget)}, "
                 f"over by {_bytes(peak - budget)}",
                 f"  live at step {step}: {len(live)} buffers, {_bytes(live_sum)}; "
                 f"the arena adds {peak - live_sum} bytes of fragmentation and alignment:"]
        for b in live[:max_listed]:
            lines.append(f"    {b.size:>10} bytes  {b.name}  [{b.kind}]  layer {b.layer or '?'}  "
                         f"steps {b.first}..{b.last}")
        if len(live) > max_listed:
            rest = live[max_listed:]
            lines.append(f"    ... and {len(rest)} more, {sum(b.size for b in rest)} bytes")
        problems.append("\n".join(lines))
    if problems:
        err = BudgetError("memory plan does not fit the target (1 KB = 1024 bytes):\n" + "\n".join(problems))
        err.plan, err.budgets = plan, dict(budgets)  # for callers that explain or draw the refused plan
        raise err


def format_plan(plan: Plan, region: str = "sram", width: int = 64) -> str:
    """ASCII picture of one region's arena, like TFLite Micro's PrintMemoryPlan.

    One row per buffer, sorted by offset: name, size, lifetime, offset, then a bar `width` columns wide
    spanning the whole arena (each column is peak / width bytes) with '#' where the buffer sits.
    """
    group = sorted((b for b in plan.buffers if b.region == region), key=lambda b: (plan.offsets[b.name], b.first, b.name))
    peak = plan.peak.get(region, 0)
    step, live = peak_step(plan, region)
    head = (f"region {region!r}: arena {_bytes(peak)}, {len(group)} buffers; most live: "
            f"{sum(b.size for b in live)} bytes at step {step}; one column = {peak / width:.1f} bytes")
    name_w = max([len("name")] + [len(b.name) for b in group])
    rows = [head, f"{'name':<{name_w}} {'bytes':>9} {'steps':>9} {'offset':>9} |{'arena':^{width}}|"]
    for b in group:
        off = plan.offsets[b.name]
        bar = ["."] * width
        if b.size and peak:
            lo = off * width // peak
            hi = max(lo + 1, -(-(off + b.size) * width // peak))  # at least one column per non-empty buffer
            bar[lo:hi] = "#" * (hi - lo)
        rows.append(f"{b.name:<{name_w}} {b.size:>9} {f'{b.first}..{b.last}':>9} {off:>9} |{''.join(bar)}|")
    return "\n".join(rows)
