"""TinyTL adaptation: freezing policies, batch-1 steps, the six-method sweep, and bad input."""
import json

import pytest
import torch
import torch.nn.functional as F

from train.adapt import AdaptConfig, adapt, prepare_model
from train.checkpoint import save_checkpoint
from train.errors import UserError
from train.methods import METHODS, apply_method, set_adapt_mode
from train.models import build_model, load_spec
from train.pretrain import PretrainConfig, pretrain


def _model():
    return build_model(load_spec("mcunet-tiny", lite_residual=True))


def _expected(model, method):
    """The policy spelled out independently of train.methods, by parameter name."""
    out = []
    for n, _ in model.named_parameters():
        lite, head = ".lite." in n, n.startswith("classifier.")
        norm = ".bn." in n or ".norm" in n
        ok = {"ft-full": True, "ft-last": head,
              "ft-norm-last": head or (norm and not lite),
              "tinytl-b": head or (".bn.bias" in n),
              "tinytl-l": head or lite,
              "tinytl-lb": head or lite or (".bn.bias" in n)}[method]
        if ok:
            out.append(n)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_freezing_policy_trains_exactly_the_methods_parameters(method):
    model = _model()
    names = apply_method(model, method)
    assert names == _expected(model, method)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names


def test_tinytl_b_trains_every_main_bias_and_the_head_only():
    model = _model()
    names = set(apply_method(model, "tinytl-b"))
    n_bn = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert len(names) == n_bn + 2 and {"classifier.weight", "classifier.bias"} <= names


@pytest.mark.parametrize("method", ["tinytl-lb", "tinytl-b", "ft-norm-last"])
def test_batch1_step_changes_only_trainable_parameters(method):
    model = _model()
    with torch.no_grad():  # make lite branches live so their gradients are nonzero
        for b in model.blocks[1:]:
            b.lite.norm2.weight.fill_(0.5)
    apply_method(model, method)
    set_adapt_mode(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = F.cross_entropy(model(torch.randn(1, 1, 32, 32)), torch.tensor([3]))  # batch 1: BN frozen, GN per sample
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == p.requires_grad, f"{n}: changed={changed}, trainable={p.requires_grad}"
    for old, m in zip(bn_stats, [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]):
        assert torch.equal(old, m.running_mean)  # frozen statistics


def test_new_head_and_zero_started_branches_when_checkpoint_has_none():
    plain = build_model(load_spec("mcunet-tiny"))
    model, names = prepare_model(plain, 7, "tinytl-lb", "pretrained", seed=0)
    assert model.classifier.out_features == 7 and model.spec.num_classes == 7
    assert all(b.lite is not None and torch.count_nonzero(b.lite.norm2.weight) == 0 for b in model.blocks[1:])
    assert any(".lite." in n for n in names)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain(PretrainConfig(data="digits", model="mcunet-tiny", lite_residual=True, epochs=1, batch_size=32, limit=256,
                            augment_flip=False), out, progress=False)
    return out / "model.pt"


def test_adapt_writes_what_conversion_consumes(pretrained, tmp_path):
    m = adapt(AdaptConfig(checkpoint=str(pretrained), data="digits", method="tinytl-lb", epochs=1, batch_size=1, limit=64,
                          augment_flip=False), tmp_path / "a", progress=False)
    info = json.loads((tmp_path / "a" / "model.json").read_text())
    assert info["method"] == "tinytl-lb" and info["stage"] == "adapt"
    assert info["trainable"] == _expected(build_model(load_spec("mcunet-tiny", lite_residual=True)), "tinytl-lb")
    assert info["test_acc"] == m["test_acc"] and info["memory"]["total_bytes"] > 0
    raw = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert raw["method"] == "tinytl-lb" and raw["model_spec"]["num_classes"] == 10


def test_adapt_bad_input(pretrained, tmp_path):
    with pytest.raises(UserError, match="unknown method 'tinytl-x'"):
        AdaptConfig(checkpoint=str(pretrained), method="tinytl-x")
    # a checkpoint whose weights do not match its spec
    model = build_model(load_spec("mcunet-tiny"))
    save_checkpoint(tmp_path / "bad.pt", model, preprocess={"resolution": 32, "channels": 1}, classes=list("abcdefghij"), meta={})
    raw = torch.load(tmp_path / "bad.pt", weights_only=True)
    raw["model_spec"]["stem_channels"] = 24
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt: weights do not match the model spec"):
        adapt(AdaptConfig(checkpoint=str(tmp_path / "bad.pt"), data="digits"), tmp_path / "o", progress=False)
    # target images that do not fit the model (200 px into a 32 px network)
    import numpy as np
    np.savez(tmp_path / "big.npz", x=np.zeros((40, 200, 200), np.uint8), y=np.arange(40) % 2)
    with pytest.raises(UserError, match="200"):
        adapt(AdaptConfig(checkpoint=str(pretrained), data=str(tmp_path / "big.npz")), tmp_path / "o3", progress=False)
    # a checkpoint that is not one of ours
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: not a readable weights-only checkpoint"):
        adapt(AdaptConfig(checkpoint=str(tmp_path / "junk.pt"), data="digits"), tmp_path / "o2", progress=False)


def test_sweep_reuses_finished_runs_and_reports(pretrained, tmp_path):
    from train.sweep import Run, sweep, write_report
    runs = [Run("ft-last", 8), Run("tinytl-b", 8)]
    kw = dict(runs=runs, epochs=1, limit=64, flip=False, progress=False)
    rows = sweep(pretrained, "digits", tmp_path / "runs", **kw)
    stamp = (tmp_path / "runs" / "ft-last-b8" / "model.pt").stat().st_mtime_ns
    assert sweep(pretrained, "digits", tmp_path / "runs", **kw) == rows  # reused, not retrained
    assert (tmp_path / "runs" / "ft-last-b8" / "model.pt").stat().st_mtime_ns == stamp
    sweep(pretrained, "digits", tmp_path / "runs", **(kw | {"limit": 32}))  # another config: retrained
    assert (tmp_path / "runs" / "ft-last-b8" / "model.pt").stat().st_mtime_ns != stamp
    md = write_report(rows, tmp_path / "results", title="t")
    text = md.read_text()
    assert "| ft-last-b8 | FT-Last | 8 |" in text and (tmp_path / "results" / "adapt.png").stat().st_size > 1000
