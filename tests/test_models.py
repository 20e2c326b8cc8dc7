import pytest
import torch

from train.errors import UserError
from train.models import ModelSpec, build_model, count_parameters, insert_lite_residual, lite_kernel_sizes, list_presets, load_spec


def test_proxylessnas_mobile_has_the_papers_parameter_count():
    assert count_parameters(build_model(load_spec("proxylessnas-mobile"))) == 4_080_512


def test_mbv2_w035_matches_reference_size():
    # Keras' MobileNetV2 alpha=0.35 reports 1.66M parameters at 1000 classes (its rounding differs slightly).
    n = count_parameters(build_model(load_spec("mbv2-w0.35")))
    assert 1.60e6 < n < 1.72e6


def test_mcunet_tiny_is_mcu_sized():
    assert count_parameters(build_model(load_spec("mcunet-tiny"))) < 100_000


def test_every_preset_builds_and_runs():
    for name in list_presets():
        spec = load_spec(name, resolution=64 if name != "mcunet-tiny" else None)
        y = build_model(spec).eval()(torch.randn(2, spec.in_channels, spec.resolution, spec.resolution))
        assert y.shape == (2, spec.num_classes)


def test_skipped_blocks_are_absent():
    spec = load_spec("proxylessnas-mobile")
    present = sum(sum(s.present) for s in spec.stages)
    assert len(build_model(spec).blocks) == present == 1 + 2 + 4 + 8 + 5


def test_lite_kernels_follow_the_nominal_128px_rule():
    model = build_model(load_spec("proxylessnas-mobile"))
    sizes = lite_kernel_sizes([b.stride for b in model.blocks])[1:]
    assert [k for k, _ in sizes] == [5] * 15 + [3] * 4  # the paper: 3 only in the last four blocks
    assert lite_kernel_sizes([1, 2, 2, 2, 2, 2, 2, 2]) == [(5, True), (5, True), (5, True), (5, True), (5, True), (3, True), (1, True), (1, False)]


@pytest.mark.parametrize("name", ["mcunet-tiny", "proxylessnas-mobile"])
def test_inserting_lite_residual_leaves_output_unchanged(name):
    spec = load_spec(name, resolution=64 if name != "mcunet-tiny" else None)
    model = build_model(spec).eval()
    x = torch.randn(3, spec.in_channels, spec.resolution, spec.resolution)
    before = model(x)
    insert_lite_residual(model)
    assert all(b.lite is not None for b in model.blocks[1:]) and model.blocks[0].lite is None
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    # ... and the branch is live: a nonzero final-norm scale changes the output.
    with torch.no_grad():
        model.blocks[-1].lite.norm2.weight.fill_(1.0)
    assert not torch.allclose(model(x), before)


def test_spec_round_trips_through_a_dict():
    spec = load_spec("proxylessnas-mobile")
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_bad_model_specs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model 'resnet50'.*mcunet-tiny"):
        load_spec("resnet50")
    bad = tmp_path / "m.yaml"
    bad.write_text("resolution: 32\nin_channels: 1\nnum_classes: 10\nstem_channels: 8\nstem_stride: 1\nstages: []\ncolour: red\n")
    with pytest.raises(UserError, match=r"m.yaml: unknown key\(s\) colour"):
        load_spec(str(bad))
    bad.write_text("resolution: 32\nin_channels: 1\nnum_classes: 10\nstem_channels: 8\nstem_stride: 1\n"
                   "stages: [{stride: 1, channels: [8, 8], kernels: [3], expansions: [1, 1]}]\n")
    with pytest.raises(UserError, match="'kernels' has 1 entries, 'channels' has 2"):
        load_spec(str(bad))
