"""`make demo`'s closing summary reports what the stages wrote, and says 'missing' rather than inventing."""
from __future__ import annotations

import json

from bench.demo_summary import summary


def test_summary_reads_the_stage_outputs_and_flags_what_is_missing(tmp_path):
    runs, sim = tmp_path / "runs", tmp_path / "runs" / "sim" / "mcu-256k"
    (runs / "pretrain").mkdir(parents=True)
    (runs / "pretrain" / "model.json").write_text(json.dumps({"test_acc": 0.9123}))
    for name, acc, mem in (("ft-full-b8", 0.93, 12_000_000), ("tinytl-lb-b8", 0.91, 3_000_000)):
        (runs / "adapt" / name).mkdir(parents=True)
        (runs / "adapt" / name / "model.json").write_text(json.dumps({"test_acc": acc, "memory": {"total_bytes": mem}}))
    sim.mkdir(parents=True)
    (sim / "results.json").write_text(json.dumps({"profile": "mcu-256k", "steps": 500, "final_accuracy": 0.5, "eval_samples": 500,
                                                 "region": "sram", "peak_bytes": 248_000, "budget_bytes": 262_144,
                                                 "weights_bytes": 480_000, "step_ms_est": 32.0}))
    (runs / "sim" / "ft-full").mkdir()
    (runs / "sim" / "ft-full" / "refused.txt").write_text("memory plan does not fit: over by 2 MB\nmore\n")
    (runs / "sim" / "tinytl-lb-b1").mkdir()  # not a refusal: ignored
    (runs / "adapt" / "tinytl-lb-b1").mkdir(parents=True)
    (runs / "adapt" / "tinytl-lb-b1" / "model.json").write_text(json.dumps({"test_acc": 0.85, "memory": {"total_bytes": 660_000}}))
    text = summary(runs, tmp_path / "results", sim, 600)
    assert "in 10.0 min" in text and "test accuracy 0.9123" in text
    assert "TinyTL-L+B 0.910 vs FT-Full 0.930 (-2.0 points) at 4.0x less training memory" in text
    assert "500 steps, accuracy 0.5000 on 500" in text and "242.2 of 256.0 KB" in text
    assert "memory plan does not fit" in text  # no peak/budget figures in the file: its first line
    assert "TinyTL-L+B at batch 1: 0.850 at 0.66 MB" in text
    missing = [line for line in text.splitlines() if " missing " in f"{line} "]
    assert len(missing) == 3, missing  # the conversion report, the L+B refusal and the LiteRT evaluation were never written


def test_refusal_is_shown_as_planned_peak_against_budget(tmp_path):
    sim = tmp_path / "runs" / "sim" / "mcu-256k"
    (sim.parent / "ft-full").mkdir(parents=True)
    (sim.parent / "ft-full" / "refused.txt").write_text(
        "refused on mcu-256k: FT-Full (every conv weight trains ...) with sgd does not fit, nothing was run.\n"
        "memory plan does not fit the target (1 KB = 1024 bytes):\n"
        "region 'sram': peak 2418256 bytes (2361.6 KB) > budget 262144 bytes (256.0 KB), over by 2156112 bytes (2105.6 KB)\n")
    text = summary(tmp_path / "runs", tmp_path / "results", sim, None)
    assert "planned 2361.6 KB > budget 256.0 KB" in text
