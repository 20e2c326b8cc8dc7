"""Training memory in the TinyTL paper's accounting (train/memory.py), next to the paper's own figures.

Models: ProxylessNAS-Mobile with lite residual branches at 224 px and a 102-class head (Flowers-102, the
paper's setting), batch 8 and 1; then mbv2-w0.35 at 128 px (same 102-class head) and the default model
(train/presets/default.yaml: mcunet-tiny, 32 px, 1 channel, 10 classes). Analytic: no training runs.
"""
from __future__ import annotations

from train.memory import MB, PAPER_PROXYLESS_MB, estimate_all
from train.methods import METHODS
from train.models import build_model, insert_lite_residual, load_spec
from train.sweep import LABEL

from . import _bundles as B

# The paper's batch-1 figure: TinyTL-L+B on ProxylessNAS-Mobile, "about 16 MB" (one figure, not per method).
PAPER_BATCH1_MB = {"tinytl-lb": 16}
SOURCE = ("TinyTL (Cai et al., NeurIPS 2020): the six-method training-memory comparison on ProxylessNAS-Mobile, "
          "224 px, batch 8, Flowers-102 head; the figures pinned in `train/memory.py` (`PAPER_PROXYLESS_MB`) and "
          "checked to 10% by `tests/test_memory.py`. Batch 1: the paper reports only TinyTL's ~16 MB.")
MODELS = [  # (preset, px, classes, why)
    ("proxylessnas-mobile", 224, 102, "the paper's setting: Flowers-102 head"),
    ("mbv2-w0.35", 128, 102, "its preset resolution, the same 102-class head"),
    ("mcunet-tiny", 32, 10, "the default model (train/presets/default.yaml), 1 channel, 10 classes"),
]


def estimates(preset: str, res: int, classes: int, batches=(8, 1)) -> dict[int, dict[str, dict]]:
    """{batch: {method: {trainable_params, param_mb, activation_mb, total_mb, peak_layer}}} from the estimator."""
    model = build_model(load_spec(preset, num_classes=classes))
    insert_lite_residual(model)
    out = {}
    for b in batches:
        out[b] = {e.method: {"trainable_params": e.trainable_params, "param_mb": e.param_bytes / MB,
                             "activation_mb": e.activation_bytes / MB, "total_mb": e.total_bytes / MB,
                             "peak_layer": e.peak_layer} for e in estimate_all(model, res, b)}
    return out


def _mb(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _ratio(ours: float, paper: float | None) -> str:
    return f"{ours / paper:.2f}" if paper else "-"


def table(rows: dict[str, dict], paper: dict[str, float] | None = None) -> str:
    """One batch size: methods x (params, activations, total, x less than FT-Full[, paper, ours/paper])."""
    full = rows["ft-full"]["total_mb"]
    head = "| method | trainable params | params MB | activations MB | total MB | x less than FT-Full |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if paper is not None:
        head += " paper MB | paper x less | ours / paper |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for m in METHODS:
        r = rows[m]
        line = (f"| {LABEL[m]} | {r['trainable_params']:,} | {r['param_mb']:.2f} | {r['activation_mb']:.2f} | "
                f"{_mb(r['total_mb'])} | {full / r['total_mb']:.1f}x |")
        if paper is not None:
            p = paper.get(m)
            pf = paper.get("ft-full")
            line += (f" {p if p is not None else '-'} | {f'{pf / p:.1f}x' if p and pf else '-'} | "
                     f"{_ratio(r['total_mb'], p)} |")
        lines.append(line)
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    models = MODELS[:1] + MODELS[2:] if quick else MODELS
    data, parts = {}, []
    for preset, res, classes, why in models:
        est = estimates(preset, res, classes)
        data[preset] = {"resolution": res, "classes": classes, "batches": {str(b): v for b, v in est.items()}}
        paper = {8: PAPER_PROXYLESS_MB, 1: PAPER_BATCH1_MB} if preset == "proxylessnas-mobile" else {8: None, 1: None}
        for b in (8, 1):
            parts.append(f"**{preset}, {res} px, {classes} classes, batch {b}**: {why}\n\n{table(est[b], paper[b])}\n")
    data["paper"] = {"batch8": PAPER_PROXYLESS_MB, "batch1": PAPER_BATCH1_MB, "source": SOURCE}
    B.write_json("memory_paper", data)
    note = "\n- Quick mode: mbv2-w0.35 skipped.\n" if quick else ""
    return ("The paper's accounting (`python -m train memory`): params (trainable 32-bit, frozen 8-bit) + batch x "
            "the batch-1 activation peak (32-bit saved inputs of layers whose weight trains, 1-bit ReLU masks). "
            "MB = 10^6 bytes, as the paper. Every model with lite residual branches (frozen unless the method "
            "trains them), so all six methods are compared on one network. "
            f"Paper figures: {SOURCE}\n\n" + "\n".join(parts) + note)
