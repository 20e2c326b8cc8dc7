"""`python -m firmware_sim export-tflm`: the C array is the model, the arena is measured and is the smallest that
runs, TFLM's interpreter agrees with LiteRT's reference kernels, and what cannot be exported is refused."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")
tflite_micro = pytest.importorskip("tflite_micro")

from device.tflite_reader import read_tflite  # noqa: E402
from firmware_sim.tflm import EXAMPLE, TFLMError, add_parser, cmd_export_tflm, export_model, run_tflm  # noqa: E402

runtime = tflite_micro.runtime


def _convert(fn, shape) -> bytes:
    """A float function -> a fully int8 .tflite (int8 input and output), as convert/ makes them."""
    cf = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    rng = np.random.default_rng(7)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], cf)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.normal(0, 1, shape).astype(np.float32)] for _ in range(32))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def _weights(seed: int, *shapes):
    r = np.random.default_rng(seed)
    return [r.normal(0, 0.3, s).astype(np.float32) for s in shapes]


def small_cnn() -> bytes:
    """PAD, CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN, FULLY_CONNECTED: the ops of our bundles' int8 path."""
    w1, b1, wd, bd, w2, b2, wf, bf = _weights(0, (3, 3, 3, 8), 8, (3, 3, 8, 1), 8, (1, 1, 8, 8), 8, (8, 10), 10)

    def f(x):
        y = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        y = tf.nn.relu6(tf.nn.conv2d(y, w1, 2, "VALID") + b1)
        z = tf.nn.relu6(tf.nn.depthwise_conv2d(y, wd, [1, 1, 1, 1], "SAME") + bd)
        y = y + tf.nn.conv2d(z, w2, 1, "SAME") + b2
        return tf.matmul(tf.reduce_mean(y, axis=(1, 2)), wf) + bf
    return _convert(f, (1, 12, 12, 3))


def topk_model() -> bytes:
    """TOPK_V2: builtin in LiteRT, absent from TFLM's op resolver (its kernels/ has no top-k)."""
    w, b = _weights(1, (3, 3, 3, 4), 4)
    return _convert(lambda x: tf.math.top_k(tf.reshape(tf.nn.conv2d(x, w, 1, "SAME") + b, (1, -1)), k=3).values,
                    (1, 6, 6, 3))


def c_array(text: str) -> bytes:
    """The bytes of g_model_data, parsed back from model_data.c."""
    body = text[text.index("g_model_data[] = {") + len("g_model_data[] = {"):text.index("};")]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("tflm")
    (d / "small.tflite").write_bytes(small_cnn())
    meta = export_model(d / "small.tflite", d / "out", log=lambda s: None)
    return d / "small.tflite", d / "out", meta


def test_c_array_is_the_model(exported):
    path, out, meta = exported
    model = path.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model_data.c", "model_data.h", "tflm.json"]
    c = (out / "model_data.c").read_text()
    assert c_array(c) == model
    assert f"g_model_data_len = {len(model)};" in c
    rows = re.findall(r"^  (0x.*?),?$", c, re.M)
    assert {len(r.split(", ")) for r in rows[:-1]} == {12} and 1 <= len(rows[-1].split(", ")) <= 12
    h = (out / "model_data.h").read_text()
    assert f"#define MODEL_ARENA_BYTES {meta['arena_bytes']}\n" in h
    assert "extern const unsigned char g_model_data[];" in h and "extern const unsigned int g_model_data_len;" in h
    assert json.loads((out / "tflm.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["model_bytes"] == len(model) and meta["tflite_micro"] == tflite_micro.__version__
    ops = [op.name for op in read_tflite(model).ops]
    assert [o["name"] for o in meta["ops"]] == list(dict.fromkeys(ops)) and all(o["supported"] for o in meta["ops"])
    assert {o["name"]: o["resolver"] for o in meta["ops"]}["DEPTHWISE_CONV_2D"] == "AddDepthwiseConv2D"
    assert "resolver.AddFullyConnected();" in (out / "README.md").read_text()


@pytest.mark.skipif(not (shutil.which("cc") and shutil.which("c++")), reason="no C compiler")
@pytest.mark.parametrize("compiler,std", [("cc", "c99"), ("cc", "c11"), ("c++", "c++11")])
def test_c_array_compiles_aligned(exported, tmp_path, compiler, std):
    path, out, _ = exported
    main = tmp_path / "main.c"
    main.write_text('#include <stdint.h>\n#include "model_data.h"\nint main(void) {\n'
                    f'  return (uintptr_t)g_model_data % 16 != 0 || g_model_data_len != {path.stat().st_size}u'
                    " || g_model_data[4] != 'T';\n}\n")
    lang = ["-x", "c++"] if compiler == "c++" else []
    subprocess.run([compiler, *lang, f"-std={std}", "-Wall", "-Werror", "-pedantic", f"-I{out}", str(main),
                    str(out / "model_data.c"), "-o", str(tmp_path / "main")], check=True)
    assert subprocess.run([str(tmp_path / "main")]).returncode == 0


def test_arena_is_measured_and_smallest(exported):
    path, _, meta = exported
    arena = meta["arena_bytes"]
    assert arena > 0 and arena % 16 == 0 and arena >= meta["recorded_bytes"] > 0
    assert run_tflm(path, arena)[0]           # exactly that arena builds and invokes
    assert not run_tflm(path, arena - 16)[0]  # 16 bytes less does not (in a child: TFLM may crash there)


def test_tflm_matches_litert(exported):
    """The exported bytes (read back from model_data.c) in TFLM's interpreter with exactly the measured arena vs
    LiteRT's reference kernels (BUILTIN_REF), on random and extreme int8 inputs.
    Tolerance: every op exact except FULLY_CONNECTED, which may differ by 1 LSB. Measured (tflite-micro
    0.dev20261023182759, ai-edge-litert 2.3.0): TFLM's reference per-channel FULLY_CONNECTED rounds its
    requantization differently from LiteRT's, by 1 LSB on 19 of 10,000 outputs of this model (1,000 random
    inputs) and 4 of 3,000 of a tinytl-lb bundle's; PAD, CONV_2D, DEPTHWISE_CONV_2D, ADD and MEAN bit-exact."""
    _, out, meta = exported
    model = c_array((out / "model_data.c").read_text())
    m = read_tflite(model)
    ref = litert.Interpreter(model_content=model, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
                             experimental_preserve_all_tensors=True)
    ref.allocate_tensors()
    micro = runtime.Interpreter.from_bytes(model, arena_size=meta["arena_bytes"])
    every = runtime.Interpreter.from_bytes(model, arena_size=1 << 20,  # keeps every tensor: needs more arena
                                           intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    shape, zp = m.tensors[m.inputs[0]].shape, int(m.tensors[m.inputs[0]].quant.zero_point[0])
    rng = np.random.default_rng(0)
    xs = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(24)]
    xs += [np.full(shape, v, np.int8) for v in (-128, 127, zp)]
    worst, differing, total = {}, 0, 0
    for x in xs:
        ref.set_tensor(ref.get_input_details()[0]["index"], x)
        ref.invoke()
        for it in (micro, every):
            it.set_input(x, 0)
            it.invoke()
        y = micro.get_output(0)
        y_ref = ref.get_tensor(ref.get_output_details()[0]["index"])
        assert y.dtype == np.int8 and y.shape == y_ref.shape
        differing, total = differing + int((y != y_ref).sum()), total + y.size
        assert np.abs(y.astype(int) - y_ref).max() <= 1
        for op in m.ops:
            t = op.outputs[0]
            got = every.GetTensor(t, 0)["tensor_data"].reshape(ref.get_tensor(t).shape)
            worst[op.name] = max(worst.get(op.name, 0), int(np.abs(got.astype(int) - ref.get_tensor(t)).max()))
    assert worst.pop("FULLY_CONNECTED") <= 1
    assert set(worst.values()) == {0}, worst
    assert differing <= 0.02 * total, f"{differing} of {total} outputs differ by 1 LSB"   # measured: 0.2%


def test_existing_out_is_refused_untouched(exported, tmp_path):
    path, _, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TFLMError, match=re.escape(str(out))):
        export_model(path, out, log=lambda s: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]   # no temporary folder left beside it
    (out / "keep.txt").unlink()
    export_model(path, out, log=lambda s: None)             # an empty folder is fine
    assert (out / "model_data.c").exists()


def test_op_tflm_lacks_is_named(tmp_path):
    path = tmp_path / "topk.tflite"
    path.write_bytes(topk_model())
    assert "TOPK_V2" in [op.name for op in read_tflite(path).ops]
    with pytest.raises(TFLMError, match=rf"{re.escape(str(path))}: op TOPK_V2 is not in TFLM's op resolver"):
        export_model(path, tmp_path / "out", log=lambda s: None)
    assert [p.name for p in tmp_path.iterdir()] == ["topk.tflite"]


def test_not_a_model_is_refused(tmp_path):
    path = tmp_path / "x.tflite"
    path.write_bytes(b"not a model")
    with pytest.raises(TFLMError, match=re.escape(str(path))):
        export_model(path, tmp_path / "out", log=lambda s: None)
    with pytest.raises(TFLMError, match="no such model file"):
        export_model(tmp_path / "missing.tflite", tmp_path / "out", log=lambda s: None)


def _parser():
    p = argparse.ArgumentParser(prog="python -m firmware_sim")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    return p


def test_parser_has_an_example(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["export-tflm", "--help"])
    assert EXAMPLE in capsys.readouterr().out
    a = _parser().parse_args(["export-tflm", "--bundle", "b", "--tflite", "m.tflite", "--out", "o"])
    assert (str(a.bundle), str(a.tflite), str(a.out)) == ("b", "m.tflite", "o")


@pytest.mark.slow
def test_cli_on_a_real_bundle(tmp_path_factory, tmp_path, capsys):
    from device_helpers import new_task_bundle
    bundle = new_task_bundle(tmp_path_factory, "tinytl-lb")   # shared with test_device_*: built once per session
    cmd_export_tflm(_parser().parse_args(["export-tflm", "--bundle", str(bundle), "--out", str(tmp_path / "tflm")]))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    meta = json.loads((tmp_path / "tflm" / "tflm.json").read_text())
    assert f"arena {meta['arena_bytes']:,} bytes" in line and str(tmp_path / "tflm") in line
    assert c_array((tmp_path / "tflm" / "model_data.c").read_text()) == (bundle / "inference.tflite").read_bytes()
    assert meta["labels"] == json.loads((bundle / "manifest.json").read_text())["labels"]
    assert run_tflm(bundle / "inference.tflite", meta["arena_bytes"])[0]
