"""Fast checks of the benchmark code: memory_paper's table, the accuracy summary, and BENCHMARKS.md's goal verdicts
on small synthetic inputs (no training, no conversion)."""
import json

import pytest

from bench import accuracy, memory_paper, summary
from train.memory import PAPER_PROXYLESS_MB
from train.methods import METHODS


def test_memory_paper_table_has_proxylessnas_rows_with_ratios_from_the_estimator():
    est = memory_paper.estimates("proxylessnas-mobile", 224, 102, batches=(8,))[8]
    text = memory_paper.table(est, PAPER_PROXYLESS_MB)
    rows = [line for line in text.splitlines()[2:]]
    assert len(rows) == len(METHODS)
    for m, line in zip(METHODS, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        ours, paper = est[m]["total_mb"], PAPER_PROXYLESS_MB[m]
        assert float(cells[-1]) == pytest.approx(ours / paper, abs=0.006)  # ours / paper, from the estimator
        assert abs(ours / paper - 1) < 0.10                                  # as tests/test_memory.py pins
        assert cells[5] == f"{est['ft-full']['total_mb'] / ours:.1f}x"      # x less than FT-Full
        assert cells[6] == str(paper)
    assert rows[0].startswith("| FT-Full |") and "1.0x" in rows[0]


def _rows(full=(0.90, 0.92, 0.91), lb=(0.89, 0.90, 0.88), data="animal-mnist"):
    out = []
    for m, accs, mem in (("ft-full", full, 12.0), ("tinytl-lb", lb, 2.0)):
        out += [{"data": data, "batch": 8, "method": m, "seed": s, "test_acc": a, "memory_mb": mem} for s, a in enumerate(accs)]
    return out


def test_accuracy_summary_and_goal():
    s = accuracy.summarize(_rows())
    full = s["accuracy"]["animal-mnist"]["8"]["ft-full"]
    assert full["mean"] == pytest.approx(0.91) and full["std"] == pytest.approx(0.01) and (full["min"], full["max"]) == (0.90, 0.92)
    g = accuracy.goal_lb_vs_full(s)["animal-mnist"]
    assert g["met"] is True and g["drop_points"] == pytest.approx(2.0) and g["memory_ratio"] == pytest.approx(6.0)
    assert accuracy.goal_lb_vs_full(accuracy.summarize(_rows(lb=(0.80, 0.80, 0.80))))["animal-mnist"]["met"] is False
    assert accuracy.goal_lb_vs_full(s, min_ratio=10)["animal-mnist"]["met"] is False  # accurate, but not enough memory saved
    only_full = accuracy.summarize([r for r in _rows() if r["method"] == "ft-full"])
    assert accuracy.goal_lb_vs_full(only_full)["animal-mnist"]["met"] is None


STEP_MD = """# device_step

| method | ours ms | torch 1 thread ms | torch 2 threads ms | ours / torch 1 thread |
|---|---|---|---|---:|
| tinytl-b | 30.0 (25.0..40.0) | 41.0 (40.0..50.0) | 35.5 (30.0..60.0) | 0.73x |
| tinytl-lb | 50.0 (45.0..60.0) | 58.3 (41.9..94.4) | 120.4 (64.6..180.1) | 0.86x |
"""


def test_step_speed_goal_met_not_met_and_missing():
    g = summary.step_speed(STEP_MD)
    assert g["torch_met"] is True and g["litert_met"] is None and g["met"] is None and "LiteRT" in g["why"]
    assert g["rows"][0] == {"method": "tinytl-b", "ours_ms": 30.0, "torch_ms": 35.5, "litert_ms": None}
    slow = STEP_MD.replace("| 50.0 (45.0..60.0)", "| 70.0 (45.0..90.0)")
    assert summary.step_speed(slow)["met"] is False  # slower than PyTorch: not met, whatever LiteRT would say
    with_lite = STEP_MD.replace("| ours / torch 1 thread |", "| LiteRT train.tflite ms | ours / torch 1 thread |") \
        .replace("|---:|", "|---|---:|").replace("| 0.73x", "| 31.0 (30..33) | 0.73x").replace("| 0.86x", "| 49.0 (45..50) | 0.86x")
    g = summary.step_speed(with_lite)
    assert g["litert_met"] is False and g["met"] is False  # 50.0 > 49.0 on tinytl-lb
    assert summary.step_speed(with_lite.replace("49.0 (45..50)", "55.0 (45..60)"))["met"] is True
    partial = with_lite.replace("49.0 (45..50)", "n/a (peer: tinytl-b, ft-last)")  # LiteRT covers one method only
    g = summary.step_speed(partial)
    assert g["met"] is True and g["rows"][1]["litert_ms"] is None
    assert summary.step_speed(None)["met"] is None
    assert summary.step_speed("no tables here")["met"] is None


def _engine(differ_exact=0, differ_default=4):
    return {"exactness": [{"model": "mcunet-tiny", "images": 200,
                           "exact_float_vs_reference": {"differ": differ_exact, "max_lsb": 0 if not differ_exact else 1},
                           "ours_vs_reference": {"differ": differ_default, "max_lsb": 5}}]}


def test_exact_goal():
    assert summary.exact_goal(_engine())["met"] is True
    assert summary.exact_goal(_engine())["default_met"] is False
    assert summary.exact_goal(_engine(differ_exact=1))["met"] is False
    assert summary.exact_goal(None)["met"] is None and summary.exact_goal({"exactness": []})["met"] is None


def test_benchmarks_md_from_synthetic_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "device_step.md").write_text(STEP_MD)
    (res / "engine_speed.json").write_text(json.dumps(_engine()))
    s = accuracy.summarize(_rows() + _rows(lb=(0.5, 0.5, 0.5), data="digits"))
    (res / "accuracy.json").write_text(json.dumps({"goal": accuracy.goal_lb_vs_full(s), "device": [_device_row(0.51, 0.52)]}))
    (res / "memory_paper.md").write_text("# memory_paper\n\ntext\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    out = tmp_path / "BENCHMARKS.md"
    text = summary.write(res, {"device_step": 60.0, "memory_paper": 30.0, "accuracy": 600.0}, "x86_64, 2 CPUs", out=out)
    assert out.read_text() == text and "Machine: x86_64, 2 CPUs." in text and "11.5 min in all" in text
    goals = text[text.index("## Goals"):text.index("## device_step")]
    assert "(a) " in goals and "**no data**" in goals.split("(b)")[0]       # LiteRT column missing
    assert "(b) " in goals and "**NOT met**" in goals.split("(b)")[1].split("(c)")[0]  # digits fails
    assert "**met**" in goals.split("(c)")[1]
    assert "| 1 | 2 |" in text and "[bench/results/memory_paper.md]" in text
    verdicts = json.loads((res / "goals.json").read_text())
    assert (verdicts["a"]["met"], verdicts["b"]["met"], verdicts["c"]["met"], verdicts["d"]["met"]) == (None, False, True, True)
    assert "(d) " in goals and "**met**" in goals.split("(d)")[1] and "largest gap of one order 1.0 points" in goals


def _device_row(dev: float, twin: float, method: str = "tinytl-lb") -> dict:
    orders = [{"seed": 0, "before": 0.1, "device": dev, "torch_twin": twin}]
    gap = abs(dev - twin)
    return {"method": method, "profile": "mcu-256k", "steps": 600, "accuracy": dev, "twin": twin, "orders": orders,
            "max_abs_gap": gap, "max_abs_f64_gap": 0.012, "within": gap <= accuracy.MAX_DEVICE_GAP, "peak": 1000,
            "budget": 2000, "source": "x"}


def test_device_goal():
    assert summary.device_goal({"device": [_device_row(0.50, 0.515), _device_row(0.55, 0.54, "tinytl-b")]})["met"] is True
    assert summary.device_goal({"device": [_device_row(0.50, 0.53), _device_row(0.55, 0.54, "tinytl-b")]})["met"] is False
    none_fits = {"method": "tinytl-lb", "steps": 600, "accuracy": None, "orders": []}
    assert summary.device_goal({"device": [none_fits]})["met"] is None
    assert summary.device_goal(None)["met"] is None and summary.device_goal({"device": []})["met"] is None
    assert summary.MAX_DEVICE_GAP == accuracy.MAX_DEVICE_GAP


def test_accuracy_device_table_renders_twin_and_verdict():
    rows = _rows()
    res = {"summary": accuracy.summarize(rows), "sizes": {"animal-mnist|8": [1200, 2]}, "train_sizes": {"animal-mnist|8": 1200},
           "rows": rows, "goal": {}, "source": "s", "runs_dir": "r", "seeds": [0, 1, 2],
           "device": [_device_row(0.501, 0.509), _device_row(0.50, 0.53, "tinytl-b")]}
    md = accuracy.render(res)
    dev = [t for t in summary.tables(md) if "PyTorch twin per order %" in t[0]][0]
    assert len(dev) == 4 and "| 50.1 | 50.9 | met (-0.8) | 0.8 | 1.2 |" in dev[2] and "| NOT met (-3.0) | 3.0 |" in dev[3]


# ---- the C core's rows (issue 13): device_step's sides, engine_speed's C column, native_profile's aggregation ----

def _step_json(c=10.0, t1=25.0, lite=12.0, same=True, lb_missing=True):
    med = {"numpy Trainer": 45.0, "C core (native)": c, "program on numpy": 300.0, "torch 1 thread": t1,
           "torch 2 threads": 30.0, "LiteRT train.tflite": lite}
    b = {"method": "tinytl-b", "ms_median": med, "ms_all": {n: [v, v] for n, v in med.items()},
         "loss_at_k": {n: 0.5 for n in med}, "steps_each": 20, "c_equals_program_numpy": same}
    rows = [b]
    if lb_missing:
        lb = {n: v for n, v in med.items() if n not in ("C core (native)", "program on numpy", "LiteRT train.tflite")}
        rows.insert(0, {"method": "tinytl-lb", "ms_median": lb, "ms_all": {n: [v] for n, v in lb.items()},
                        "loss_at_k": {n: 0.4 for n in lb}, "steps_each": 20, "c_equals_program_numpy": None,
                        "c_core_missing": "ProgramError: trainable parameter 'blocks.1.lite.conv1.weight' is read as a weight"})
    return {"repeats": 2, "steps_per_repeat": 10, "threads": 2, "rows": rows}


def test_c_step_goal():
    g = summary.c_step_goal(_step_json())
    assert g["met"] is True and g["torch_met"] is True and g["litert_met"] is True
    assert g["rows"][0]["speedup_vs_torch1"] == pytest.approx(2.5) and "tinytl-lb" in g["missing"][0]
    assert summary.c_step_goal(_step_json(c=13.0))["met"] is False        # 25 / 13 < 2x faster than PyTorch, 1 thread
    g = summary.c_step_goal(_step_json(lite=9.0))
    assert g["met"] is False and g["torch_met"] is True and g["litert_met"] is False
    only_lb = {"rows": _step_json()["rows"][:1]}
    assert summary.c_step_goal(only_lb)["met"] is None and "ProgramError" in summary.c_step_goal(only_lb)["why"]
    assert summary.c_step_goal(None)["met"] is None


def test_device_step_timing_row_has_the_new_sides_and_na_with_reason():
    from bench import device_step
    lb, b = _step_json()["rows"]
    row = device_step.timing_row(b, 2)
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[:3] == ["tinytl-b", "45.0 (45.0..45.0)", "10.0 (10.0..10.0)"] and cells[3].startswith("300.0")
    assert cells[7:12] == ["1.80x", "2.50x", "0.83x", "30.0x", "yes"]  # numpy Trainer / torch, torch / C, C / LiteRT, ...
    cells = [c.strip() for c in device_step.timing_row(lb, 2).strip().strip("|").split("|")]
    assert cells[2] == "n/a (not compiled: see below)" and cells[3] == "n/a" and cells[8:12] == ["n/a", "n/a", "n/a", "n/a"]
    md = "| method | numpy Trainer ms | C core (native) ms | program on numpy ms | torch 1 thread ms | torch 2 threads ms | " \
         "LiteRT train.tflite ms |\n|---|---|---|---|---|---|---|\n" + device_step.timing_row(lb, 2) + "\n" + device_step.timing_row(b, 2) + "\n"
    g = summary.step_speed(md)  # goal (a) still reads the numpy Trainer's column
    assert [r["ours_ms"] for r in g["rows"]] == [45.0, 45.0] and g["rows"][1]["litert_ms"] == 12.0 and g["met"] is False


def test_same_state_is_bitwise():
    import numpy as np
    from bench.device_step import same_state
    a = {"p": np.array([0.0, 1.0], np.float32)}
    assert same_state(a, {"p": a["p"].copy()})
    assert not same_state(a, {"p": np.array([-0.0, 1.0], np.float32)})  # equal as numbers, not bit for bit
    assert not same_state(a, {"q": a["p"]})


def _engine_c(c=3.0, ref=5.0, xnn=2.0, differ=0):
    e = _engine()
    e["exactness"][0]["ms_median"] = {"ours": 16.0, "c_core": c, "xnnpack": xnn, "reference": ref}
    e["exactness"][0]["c_core_vs_reference_timed"] = {"images": 141, "differ": differ, "max_lsb": differ}
    return e


def test_c_infer_goal():
    g = summary.c_infer_goal(_engine_c())
    assert g["met"] is True and g["rows"][0]["vs_xnnpack"] == pytest.approx(1.5)
    assert summary.c_infer_goal(_engine_c(c=5.0))["met"] is False                       # not faster than the reference
    g = summary.c_infer_goal(_engine_c(c=4.5))
    assert g["met"] is False and g["reference_met"] is True and g["xnnpack_met"] is False  # 2.25x XNNPACK
    assert summary.c_infer_goal(_engine_c(differ=1))["met"] is False                     # fast, but not exact
    assert summary.c_infer_goal(_engine())["met"] is None and summary.c_infer_goal(None)["met"] is None


class _FakeCore:
    """Records the [first, last) of each call, like tt_run's signature."""

    def __init__(self):
        self.calls = []

    def run(self, words, arena, model, io, first=0, last=-1, notes=None):
        self.calls.append((first, last))


def test_per_instruction_runs_each_instruction_alone_and_aggregates():
    import numpy as np
    from bench import native_profile as P
    core = _FakeCore()
    p = P.PerInstruction(core, 5)
    p.run(None, None, None, None)           # a whole step: 0..4 one at a time
    p.run(None, None, None, None, 1, 3)     # a range: the other rows stay NaN
    assert core.calls == [(k, k + 1) for k in range(5)] + [(1, 2), (2, 3)]
    assert len(p.rows) == 2 and np.isnan(p.rows[1][[0, 3, 4]]).all() and not np.isnan(p.seconds()).any()
    phases = P.phase_of({"forward": (0, 2), "head": (2, 3), "backward": (4, 5), "update": (5, 6)}, 6)
    assert phases == ["forward", "forward", "head", "loss", "backward", "update"]
    sec = np.array([1e-3, 3e-3, 1e-3, 0.0, 5e-3, 0.0])
    by_op = P.aggregate(["conv", "mul", "conv", "ce", "conv_dx", "adam"], sec)
    assert [(r["name"], r["instructions"]) for r in by_op[:3]] == [("conv_dx", 1), ("mul", 1), ("conv", 2)]
    assert by_op[2]["ms"] == pytest.approx(2.0) and sum(r["share"] for r in by_op) == pytest.approx(1.0)
    by_phase = {r["name"]: r for r in P.aggregate(["x"] * 6, sec, phases)}
    assert by_phase["forward"]["ms"] == pytest.approx(4.0) and by_phase["forward"]["instructions"] == 2
    assert P._net(np.array([1e-3, 1e-6]), 2e-3).tolist() == [pytest.approx(0.998e-3), 0.0]  # less 2 us, floored at 0


def test_benchmarks_md_has_the_c_goals_and_a_rerun_header(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "device_step.json").write_text(json.dumps(_step_json()))
    (res / "engine_speed.json").write_text(json.dumps(_engine_c(c=4.5)))
    (res / "native_profile.md").write_text("# native_profile\n\nstep\n\n| phase | ms |\n|---|---:|\n| forward | 3.0 |\n\n"
                                           "ops\n\n| op | ms |\n|---|---:|\n| conv2d_s8 | 1.2 |\n")
    reruns = {"native_profile": {"seconds": 60.0, "machine": "x86_64, later"}}
    text = summary.write(res, {"device_step": 60.0, "accuracy": 600.0}, "x86_64, 2 CPUs", out=tmp_path / "B.md", reruns=reruns)
    goals = text[text.index("## Goals"):]
    assert "(e) " in goals and "**met**" in goals.split("(e)")[1].split("(f)")[0]
    assert "tinytl-lb: no C-core figure (ProgramError" in goals
    assert "(f) " in goals and "**NOT met**" in goals.split("(f)")[1].split("##")[0] and "2.2x" in goals.split("(f)")[1]
    assert "not marked otherwise" in text and "`python -m bench --only native_profile`; x86_64, later" in text
    assert text.index("## device_step") < text.index("## native_profile") < text.index("## accuracy")
    assert "| conv2d_s8 | 1.2 |" in text
    verdicts = json.loads((res / "goals.json").read_text())
    assert (verdicts["e"]["met"], verdicts["f"]["met"]) == (True, False)
