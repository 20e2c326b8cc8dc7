"""train.data: sources, reproducible leak-free splits, preprocessing, augmentation, and every bad input."""

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import Dataset, Preprocess, Split, augment, check_fits, load_dataset, preprocess
from train.data import _builtin
from train.data._neardup import near_duplicate_groups
from train.data._unpickle import load_gzip_array
from train.errors import UserError


def _hashes(x: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(img.tobytes()).digest() for img in x]


def _id_npz(tmp_path, n=200, classes=4):
    """A .npz whose image i carries i in its first two pixels, so splits can be traced back."""
    x = np.zeros((n, 6, 6), np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    path = tmp_path / "ids.npz"
    np.savez(path, x=x, y=np.arange(n) % classes)
    return path


def _ids(split: Split) -> np.ndarray:
    return split.x[:, 0, 0, 0].astype(int) * 256 + split.x[:, 0, 1, 0]


# ---------------------------------------------------------------- sources

@pytest.mark.parametrize("name, hw, sizes", [
    ("digits", (8, 8), None),
    ("fashion-mnist", (28, 28), (54000, 6000, 10000)),
    ("animal-mnist", (28, 28), None),
])
def test_builtin_sources_shapes_dtypes_labels(name, hw, sizes):
    ds = load_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name and len(ds.classes) == 10
    for s in (ds.train, ds.val, ds.test):
        assert s.x.dtype == np.uint8 and s.x.shape[1:] == (*hw, 1)
        assert s.y.dtype == np.int64 and s.y.shape == (len(s.x),)
        assert s.y.min() == 0 and s.y.max() == 9
    if sizes:
        assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    total = len(ds.train) + len(ds.val) + len(ds.test)
    if name != "fashion-mnist":  # 70/10/20 of everything, per class, up to group rounding
        assert abs(len(ds.test) - 0.2 * total) <= 0.01 * total
        assert abs(len(ds.val) - 0.1 * total) <= 0.01 * total


def test_class_names():
    assert load_dataset("fashion-mnist", limit=10).classes[0] == "T-shirt/top"
    assert load_dataset("animal-mnist").classes == (
        "Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
    assert load_dataset("digits").classes == tuple("0123456789")
    assert load_dataset("digits").train.x.max() == 255  # 0..16 scaled to 0..255


@pytest.mark.parametrize("name", ["digits", "animal-mnist"])
def test_splits_deterministic_by_seed_and_differ_across_seeds(name):
    a, b, c = load_dataset(name, seed=0), load_dataset(name, seed=0), load_dataset(name, seed=1)
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(a, s).x, getattr(b, s).x)
        assert np.array_equal(getattr(a, s).y, getattr(b, s).y)
    assert not np.array_equal(a.test.x, c.test.x)


def test_splits_disjoint_covering_and_val_apart_from_test(tmp_path):
    ds = load_dataset(str(_id_npz(tmp_path)), seed=3)
    tr, va, te = _ids(ds.train), _ids(ds.val), _ids(ds.test)
    assert sorted(np.concatenate([tr, va, te])) == list(range(200))
    assert len(tr) == 140 and len(va) == 20 and len(te) == 40  # stratified: 50 per class
    assert np.all(np.bincount(ds.test.y) == 10)


def test_animal_splits_cover_the_data_exactly():
    ds = load_dataset("animal-mnist")
    x, _, _ = _builtin._animal_arrays(str(_builtin._animal_dir()))
    parts = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    assert sorted(_hashes(parts)) == sorted(_hashes(x))  # as multisets: nothing lost, nothing doubled


def test_fashion_val_comes_out_of_train():
    ds = load_dataset("fashion-mnist", seed=0)
    x_train, _, x_test, _ = _builtin._fashion_arrays(str(_builtin.FASHION_MNIST_DIR))
    assert sorted(_hashes(np.concatenate([ds.train.x, ds.val.x]))) == sorted(_hashes(x_train))
    assert np.array_equal(ds.test.x, x_test)


def test_limit_caps_train_only():
    full, capped = load_dataset("digits"), load_dataset("digits", limit=100)
    assert len(capped.train) == 100
    assert np.array_equal(full.val.x, capped.val.x) and np.array_equal(full.test.x, capped.test.x)
    assert np.array_equal(capped.train.x, load_dataset("digits", limit=100).train.x)


# ---------------------------------------------------------------- near duplicates

def test_near_duplicate_groups_on_hand_made_images():
    base = np.zeros((28, 28), np.uint8)
    base[4:24, 4:24] = 255  # 400-px square
    one_px = base.copy(); one_px[4, 4] = 0  # same picture, one pixel off: linked
    chain = one_px.copy(); chain[4, 5:9] = 0  # 5 px off base, 4 px off one_px: linked to one_px
    other = np.zeros((28, 28), np.uint8); other[10:14, :] = 255  # a different picture
    groups = near_duplicate_groups(np.stack([base, other, one_px, chain])[..., None])
    assert groups.tolist() == [0, 1, 0, 0]


def test_no_near_duplicate_group_crosses_animal_splits():
    ds = load_dataset("animal-mnist")
    which = np.repeat([0, 1, 2], [len(ds.train), len(ds.val), len(ds.test)])
    groups = near_duplicate_groups(np.concatenate([ds.train.x, ds.val.x, ds.test.x]))
    for g in np.unique(groups):
        assert len(set(which[groups == g])) == 1
    assert len(np.unique(groups)) > 8000  # grouping is not one giant chain (measured: 8541)


def _twins(test_x, train_x, max_distance=0.03):
    """Brute force, independent of _neardup: per test image, the smallest L1 silhouette distance
    sum|a - b| / (sum a + sum b) to any train image; count those below max_distance (>= 97% overlap)."""
    b = train_x.reshape(len(train_x), -1).astype(np.int32)
    b_mass = b.sum(1)
    count = 0
    for a in test_x.reshape(len(test_x), -1).astype(np.int32):
        d = np.abs(b - a).sum(1) / np.maximum(a.sum() + b_mass, 1)
        count += int(d.min() < max_distance)
    return count


def test_no_animal_test_image_has_a_twin_in_train():
    ds = load_dataset("animal-mnist")
    pick = np.random.default_rng(0).choice(len(ds.test), 150, replace=False)
    assert _twins(ds.test.x[pick], ds.train.x) == 0
    # the check has teeth: a plain random split of the same images leaks twins
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    perm = np.random.default_rng(0).permutation(len(x))
    assert _twins(x[perm[:150]], x[perm[2000:]]) > 0


# ---------------------------------------------------------------- restricted unpickler

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_code_and_loads_arrays(tmp_path):
    evil, marker = tmp_path / "evil.gz", tmp_path / "pwned"
    with gzip.open(evil, "wb") as f:
        pickle.dump(_Evil(marker), f)
    with pytest.raises(UserError, match=r"evil\.gz: the pickle refers to (posix|os|nt)\.system"):
        load_gzip_array(evil)
    assert not marker.exists()

    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.int64).reshape(2, 3), f)
    assert load_gzip_array(good).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_unpickler_refuses_non_array(tmp_path):
    path = tmp_path / "list.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(UserError, match="list.gz: expected a numeric numpy array, got list"):
        load_gzip_array(path)


# ---------------------------------------------------------------- preprocess / augment

def test_default_normalization_lands_on_the_int8_grid():
    # pixel p -> (p - 128) * 2/255: the converter's int8 input (scale 2/255, zero point 0) holds it exactly
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    out = preprocess(x, Preprocess(resolution=16, channels=1)).flatten().double().numpy()
    q = out / (2 / 255)
    assert np.abs(q - (np.arange(256) - 128)).max() < 1e-4


def test_preprocess_pads_28_to_32_centred_with_exact_values():
    x = np.zeros((2, 28, 28, 1), np.uint8)
    x[0, 0, 0, 0], x[0, 27, 13, 0], x[1, 5, 7, 0] = 255, 51, 102
    out = preprocess(x, Preprocess(resolution=32, channels=1, mean=0.5, std=0.5))
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    assert out[0, 0, 2, 2].item() == 1.0  # (255/255 - 0.5) / 0.5, moved by the 2-px border
    assert out[0, 0, 29, 15].item() == pytest.approx((51 / 255 - 0.5) / 0.5, abs=1e-6)
    assert out[1, 0, 7, 9].item() == pytest.approx((102 / 255 - 0.5) / 0.5, abs=1e-6)
    assert out[0, 0, 0, 0].item() == -1.0 and out[0, 0, 31, 31].item() == -1.0  # black border
    assert (out == -1.0).sum().item() == 2 * 32 * 32 - 3


def test_preprocess_resizes_8_to_32_and_matches_channels():
    x = np.full((3, 8, 8, 1), 255, np.uint8)
    out = preprocess(x, Preprocess(resolution=32, channels=3, mean=0.0, std=1.0))
    assert out.shape == (3, 3, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))  # uniform image stays uniform, gray repeated
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    gray = preprocess(rgb, Preprocess(resolution=32, channels=1, mean=0.0, std=1.0))
    assert gray.shape == (1, 1, 32, 32) and gray[0, 0, 5, 5].item() == pytest.approx(0.299)


def test_preprocess_dict_round_trip_and_bad_keys():
    p = Preprocess(resolution=32, channels=1, mean=0.25, std=0.5)
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(UserError, match=r"unknown key\(s\) \['size'\]"):
        Preprocess.from_dict({"resolution": 32, "channels": 1, "size": 3})
    with pytest.raises(UserError, match="channels must be 1 or 3"):
        Preprocess(resolution=32, channels=4)


def test_augment_shape_determinism_and_shift_bound():
    x = torch.full((16, 1, 32, 32), -1.0)
    x[:, :, 16, 16] = 1.0
    a = augment(x, torch.Generator().manual_seed(7), max_shift=2, flip=True)
    b = augment(x, torch.Generator().manual_seed(7), max_shift=2, flip=True)
    c = augment(x, torch.Generator().manual_seed(8), max_shift=2, flip=True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    for img in a:  # the bright pixel moved by at most 2 px (15 after a flip), nothing else lit
        (r, col), = torch.nonzero(img[0] == 1.0).tolist()
        assert abs(r - 16) <= 2 and min(abs(col - 16), abs(col - 15)) <= 2
        assert (img == -1.0).sum().item() == 32 * 32 - 1  # shifted-in border repeats the background
    assert torch.equal(augment(x, torch.Generator(), max_shift=0), x)


def test_check_fits(tmp_path):
    check_fits(load_dataset("digits"), Preprocess(resolution=32, channels=3))
    big = tmp_path / "big"
    for c in ("a", "b"):
        (big / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (300, 300), i * 40).save(big / c / f"{i}.png")
    with pytest.raises(UserError, match=r"dataset 'big': images are 300x300 px, resolution 32 fits sides 4\.\.128"):
        check_fits(load_dataset(str(big)), Preprocess(resolution=32, channels=1))


# ---------------------------------------------------------------- users' data

def _folder(tmp_path, classes=("cat", "dog"), n=10):
    root = tmp_path / "pets"
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            size = (24, 16) if i == 3 else (20, 20)  # one odd size: resized to the first image's size
            Image.new("L", size, 20 * i + k).save(root / c / f"{i:02d}.png")
    return root


def test_image_folder_ok(tmp_path):
    root = _folder(tmp_path)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "dog" / "red.jpg")  # one RGB image: all RGB
    (root / "dog" / "notes.txt").write_text("ignored")
    ds = load_dataset(str(root), seed=0)
    assert ds.name == "pets" and ds.classes == ("cat", "dog")
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    assert x.shape == (21, 20, 20, 3) and x.dtype == np.uint8
    assert np.bincount(np.concatenate([ds.train.y, ds.val.y, ds.test.y])).tolist() == [10, 11]


def test_image_folder_errors(tmp_path):
    one = _folder(tmp_path / "one", classes=("only",))
    with pytest.raises(UserError, match="at least 2 class subfolders, found only"):
        load_dataset(str(one))
    root = _folder(tmp_path / "bad")
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=r"cat/broken\.png: unreadable image"):
        load_dataset(str(root))
    empty = _folder(tmp_path / "empty")
    (empty / "fish").mkdir()
    with pytest.raises(UserError, match="fish: class folder has no .png/.jpg/.jpeg images"):
        load_dataset(str(empty))


def test_npz_ok_with_class_names(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.zeros((30, 5, 7, 3), np.uint8), y=np.arange(30) % 3, classes=np.array(["a", "b", "c"]))
    ds = load_dataset(str(path))
    assert ds.name == "mine" and ds.classes == ("a", "b", "c") and ds.train.x.shape[1:] == (5, 7, 3)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((5, 4, 4), np.uint8), y=np.zeros(6, np.int64)),
     "key 'y' has 6 labels but 'x' has 5 images"),
    (dict(x=np.zeros((4, 4, 4), np.uint8), y=np.array([0, 1, 2, 1]), classes=np.array(["a", "b"])),
     r"labels 0\.\.2, outside 0\.\.1"),
    (dict(x=np.zeros((4, 4, 4), np.uint8), y=np.array([0, -1, 1, 1])), r"labels -1\.\.1, outside 0\.\.1"),
    (dict(images=np.zeros((4, 4, 4), np.uint8), y=np.zeros(4, np.int64)), r"missing key\(s\) x \(found: images, y\)"),
    (dict(x=np.zeros((4, 4, 4), np.uint8), y=np.array([0, 1, "a", None], dtype=object)),
     "key 'y' is an object \\(pickled\\) array, which is never loaded"),
    (dict(x=np.zeros((4, 4, 4), np.float32), y=np.array([0, 1, 0, 1])), "key 'x' has dtype float32; store images as uint8"),
    (dict(x=np.full((4, 4, 4), np.nan), y=np.array([0, 1, 0, 1])), "key 'x' contains NaN"),
    (dict(x=np.zeros((4, 16), np.uint8), y=np.array([0, 1, 0, 1])), r"key 'x' has shape \(4, 16\)"),
    (dict(x=np.zeros((4, 4, 4, 4), np.uint8), y=np.array([0, 1, 0, 1])), "C = 1 or 3"),
    (dict(x=np.zeros((4, 4, 4), np.uint8), y=np.zeros(4, np.int64)), "only 1 class"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=rf"bad\.npz: .*{message}"):
        load_dataset(str(path))


def test_unknown_source_lists_known_names():
    with pytest.raises(UserError, match="not a known name \\(fashion-mnist, animal-mnist, digits\\)"):
        load_dataset("imagenet")


def test_bad_arguments():
    with pytest.raises(UserError, match="val_fraction \\+ test_fraction = 1 leaves no training data"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UserError, match="limit: must be an int >= 1"):
        load_dataset("digits", limit=0)


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(_builtin, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"Fashion-MNIST is missing; install it: sudo apt-get install "
                                        r"dataset-fashion-mnist \(or run make setup\)"):
        load_dataset("fashion-mnist")
