"""train.tflite, LiteRT's training peer: builtin ops only, and the same numbers as PyTorch.

Tolerances (float32 reordering only; measured on these models in parentheses):
- infer vs the PyTorch float model: max |logit error| <= 1e-4 x max |logit| (3e-6);
- 3 Adam steps (lr 1e-3) vs torch.optim.Adam on the same images: loss relative error <= 1e-5 (4e-7);
  each parameter's total update within 1e-6 + 1e-4 x |PyTorch's update| (worst element at 0.13 of that).
  Updates, not values, are compared: they are ~1e-3 while the values are ~1, so values would hide errors;
- save -> restore: bit-exact.
Models: random mcunet-tiny at 32 px (BN statistics from real images, see tests/test_convert.py), one with
pretrained-looking non-zero FROZEN lite branches and tinytl-b (gradients of earlier biases flow through
the branches' pool, grouped conv, GroupNorm, ReLU and bilinear resize), and ft-last on one whose lite
branches are absent (a new-task bundle from a checkpoint without them, through the CLI; ft-last keeps
the second conversion cheap: no backward through the convs).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convert import _litert_train as L
from convert._build import build_graph, graph_param_name, mark_trainable
from device import LiteRTTrainer
from device.bundle import load_bundle
from train.checkpoint import save_checkpoint
from train.data import Preprocess, load_dataset
from train.methods import apply_method, set_adapt_mode
from test_convert import _model, _realistic, _x

LR = 1e-3


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def lite_peer(tmp_path_factory, digits):
    """(model, train.tflite path, names): tinytl-b with non-zero frozen lite branches kept in the graph."""
    model = _realistic(_model("mcunet-tiny", 32), torch.from_numpy(_x(digits, 32, 1, 128)).permute(0, 3, 1, 2))
    names = apply_method(model, "tinytl-b")
    g, params = build_graph(model, 32, trainable=set(names))
    g = mark_trainable(g, names)
    grouped = [op for op in g.ops if 1 < op.attrs.get("groups", 1) < g.tensors[op.inputs[0]].shape[-1]]
    assert grouped and any(op.kind == "resize_bilinear" for op in g.ops)  # the branch ops needing custom gradients
    path = tmp_path_factory.mktemp("peer") / "train.tflite"
    path.write_bytes(L.convert_training(g, params))
    return model, path, L.trainable_order(g, params)


def _torch_steps(model: nn.Module, method: str, x: np.ndarray, y: np.ndarray) -> tuple[list[float], dict[str, np.ndarray]]:
    """PyTorch doing the same batch-1 Adam steps: losses and each trainable's update, by graph name
    (a folded conv bias moves one for one with its BN shift)."""
    m = copy.deepcopy(model)
    apply_method(m, method)
    set_adapt_mode(m)
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    opt = torch.optim.Adam(trained.values(), lr=LR)
    losses = []
    for i in range(len(x)):
        loss = F.cross_entropy(m(torch.from_numpy(x[i:i + 1]).permute(0, 3, 1, 2)), torch.tensor([int(y[i])]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {graph_param_name(n): (p.detach() - before[n]).numpy() for n, p in trained.items()}


def _check_steps(tr: LiteRTTrainer, model: nn.Module, method: str, x: np.ndarray, y: np.ndarray) -> None:
    before = tr.save()
    losses = [tr.step(x[i:i + 1], int(y[i]), LR) for i in range(len(x))]
    after = tr.save()
    ref_losses, ref = _torch_steps(model, method, x, y)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert set(ref) == set(after)
    for n, d in ref.items():
        np.testing.assert_allclose(after[n] - before[n], d.reshape(after[n].shape), rtol=1e-4, atol=1e-6, err_msg=n)


def test_builtin_ops_and_signatures(lite_peer):
    _, path, _ = lite_peer
    ops = L.op_names(path.read_bytes())
    assert not [o for o in ops if o.startswith("CUSTOM")], ops
    assert {"RESIZE_BILINEAR", "ASSIGN_VARIABLE", "READ_VARIABLE"} <= ops  # the frozen branch and the variables are in
    from ai_edge_litert.interpreter import Interpreter
    assert set(Interpreter(model_path=str(path)).get_signature_list()) == set(L.SIGNATURES)


def test_infer_matches_pytorch(lite_peer, digits):
    model, path, _ = lite_peer
    x = _x(digits, 32, 1, 8, "test")
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    tr = LiteRTTrainer(path)
    got = np.concatenate([tr.infer(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_train_matches_pytorch_adam_and_restores(lite_peer, digits):
    model, path, names = lite_peer
    tr = LiteRTTrainer(path, names)
    start = tr.save()
    assert list(start) == names and any(n.endswith(".bias") and n.startswith("blocks.") for n in names)
    _check_steps(tr, model, "tinytl-b", _x(digits, 32, 1, 3), digits.train.y[:3])
    x = _x(digits, 32, 1, 1, "test")
    trained_logits = tr.infer(x)
    tr.restore(start)
    assert all(np.array_equal(v, start[k]) for k, v in tr.save().items())
    assert not np.array_equal(tr.infer(x), trained_logits)  # restore changed what infer computes


def test_cli_ft_last_bundle_without_lite_branches(tmp_path, digits, capsys):
    from convert.__main__ import main
    from convert import ConvertConfig, load_model
    model = _model("mcunet-tiny", 32)
    model.spec = model.spec.replace(lite_residual=False)
    for b in model.blocks:
        b.lite = None
    save_checkpoint(tmp_path / "pre.pt", model, preprocess=Preprocess(32, 1).to_dict(), classes=list(digits.classes),
                    meta={"stage": "pretrain", "config": {"data": "digits"}})
    args = ["--checkpoint", str(tmp_path / "pre.pt"), "--classes", "3", "--calibration-samples", "16",
            "--eval-samples", "16", "--litert-training"]
    assert main(args + ["--method", "tinytl-lb", "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert "tinytl-lb" in err and "tinytl-b, ft-last" in err and not (tmp_path / "lb").exists()

    assert main(args + ["--method", "ft-last", "--out", str(tmp_path / "b")]) == 0
    b = load_bundle(tmp_path / "b")  # hashes checked, train.tflite among them
    entry = b.manifest["litert_training"]
    assert "train.tflite" in b.manifest["files"] and entry["file"] == "train.tflite"
    assert entry["signatures"] == list(L.SIGNATURES) and set(entry["params"]) == set(b.trainable)
    assert entry["params"] == ["classifier.weight", "classifier.bias"]
    tr = LiteRTTrainer(tmp_path / "b" / "train.tflite", entry["params"])
    np.testing.assert_array_equal(tr.save()["classifier.weight"], b.trainable["classifier.weight"])
    # the same fresh head PyTorch-side: load_model seeds it as convert did
    ref, _ = load_model(ConvertConfig(checkpoint=str(tmp_path / "pre.pt"), out="-", method="ft-last", classes=3))
    _check_steps(tr, ref, "ft-last", _x(digits, 32, 1, 3), np.minimum(digits.train.y[:3], 2))
