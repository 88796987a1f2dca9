"""Loaders, IDX parsing, the tfds path, toy sets and batching."""

import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import data

ATOL = 1e-6


def test_digits_shapes_ranges_and_split():
    (xtr, ytr), (xte, yte) = data.load("digits", "train"), data.load("digits", "test")
    assert xtr.shape == (1437, 8, 8, 1) and xte.shape == (360, 8, 8, 1)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    # 17 levels: every pixel is k/16.
    np.testing.assert_allclose(xtr * 16, np.round(xtr * 16), atol=ATOL)
    assert set(np.unique(ytr)) == set(range(10)) == set(np.unique(yte))
    # The split is fixed: loading again gives the same arrays.
    np.testing.assert_array_equal(data.load("digits", "test")[0], xte)


def test_load_dataset_bundles_both_splits():
    ds = data.load_dataset("digits")
    assert ds.shape == (8, 8, 1) and ds.num_classes == 10 and ds.levels == 17
    assert len(ds.train["x"]) + len(ds.test["x"]) == 1797


def test_text_split_is_fixed_and_by_topic():
    """``pydoc_topics``: every fifth topic (sorted by name) is the test text, topics joined by
    blank lines; the ids decode back to the text and the alphabet covers both splits."""
    from pydoc_data.topics import topics

    text = data.load_text("pydoc_topics")
    names = sorted(topics)
    every = data.TEXT_HELD_OUT_EVERY
    held_out = [topics[n] for i, n in enumerate(names) if i % every == every - 1]
    assert text.test == "\n\n".join(held_out)
    assert len(text.train) + len(text.test) == sum(map(len, topics.values())) + 2 * (
        len(names) - 2
    )  # every character once, plus the blank lines joining topics within each split
    assert 0.05 < len(text.test) / (len(text.train) + len(text.test)) < 0.1
    assert set(text.train) | set(text.test) == set(text.alphabet)
    ds = data.load_dataset("pydoc_topics")
    assert ds.alphabet == text.alphabet and ds.num_classes == len(text.alphabet)
    assert ds.train["x"].dtype == np.int32 and ds.shape == () and "y" not in ds.train
    assert ds.text("test") == text.test and ds.text("train") == text.train
    with pytest.raises(ValueError, match="not a text data set"):
        data.load_dataset("digits").text()
    with pytest.raises(ValueError, match="unknown text data set"):
        data.load_text("nope")


def test_generated_sets_are_fixed_samples_of_their_generators():
    from genjax import style

    patterns = data.load_dataset("patterns")
    assert patterns.shape == (48, 48, 3) and patterns.num_classes == len(style.PATTERNS)
    for i, name in enumerate(style.PATTERNS):
        np.testing.assert_array_equal(patterns.train["x"][i : i + 1], style.pattern(name, 48))
    strings = data.load_dataset("digit_strings")
    src, lengths, _, _ = data.digit_strings(
        jax.random.key(2), data.TOY_SIZES["test"], data.DIGIT_STRING_LENGTH
    )
    np.testing.assert_array_equal(strings.test["x"], src)
    np.testing.assert_array_equal(strings.test["y"], lengths)
    assert strings.shape == (data.DIGIT_STRING_LENGTH,)
    valid = np.arange(data.DIGIT_STRING_LENGTH)[None, :] < strings.train["y"][:, None]
    assert np.all((strings.train["x"] < 10) == valid)  # digits, then PAD


def _write_idx(path, array, gz):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(
        gzip.compress(payload) if gz else payload
    )


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, gz)
    x, y = data.load("mnist", "test", data_dir=tmp_path)
    assert x.shape == (7, 5, 4, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], images / 255.0, atol=ATOL)
    np.testing.assert_array_equal(y, labels)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    _write_idx(tmp_path / "a-idx2", array, gz=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a-idx2"), array)


def test_idx_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00\x00\x00\x01" + b"\x00")
    with pytest.raises(ValueError, match="magic number"):
        data.read_idx(bad)
    _write_idx(tmp_path / "t", np.zeros((4, 3), np.uint8), gz=False)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-2])
    with pytest.raises(ValueError, match="corrupt IDX file"):
        data.read_idx(tmp_path / "t")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "corrupt"])
def test_bad_gzip_names_the_file(tmp_path, kind):
    _write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), np.uint8), gz=True)
    path = tmp_path / "x-idx3-ubyte.gz"
    good = path.read_bytes()
    bad = {
        "garbage": b"this is not gzip at all",
        "truncated": good[: len(good) // 2],
        "corrupt": good[:10] + bytes(b ^ 0xFF for b in good[10:-8]) + good[-8:],
    }[kind]
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=f"{path}: not a readable gzip file"):
        data.read_idx(path)


@pytest.mark.parametrize("name", ["digits", "two_moons", "pydoc_topics", "patterns"])
def test_data_dir_refused_for_built_in_sets(tmp_path, name):
    with pytest.raises(ValueError, match=f"data set '{name}' is built in, reads no files"):
        data.load(name, data_dir=tmp_path)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="known: digits, mnist"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("digits", "validation")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.load("mnist", data_dir=tmp_path / "missing")
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8), gz=False)
    with pytest.raises(FileNotFoundError, match="labels"):
        data.load("mnist", "train", data_dir=tmp_path)


def test_tfds_path_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        x, y = data.load("mnist", "train")
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and y.dtype == np.int32


@given(n=st.integers(5, 60), batch_size=st.integers(1, 9), epochs=st.integers(1, 3))
def test_batches_cover_each_example_once_per_epoch(n, batch_size, epochs):
    if batch_size > n:
        batch_size = n
    arrays = {"x": np.arange(n, dtype=np.float32), "y": np.arange(n, dtype=np.int32)}
    seen = [b["y"] for b in data.batches(jax.random.key(3), arrays, batch_size, epochs)]
    per_epoch = n // batch_size
    assert len(seen) == epochs * per_epoch
    for e in range(epochs):
        ids = np.concatenate(seen[e * per_epoch : (e + 1) * per_epoch])
        assert len(set(ids.tolist())) == per_epoch * batch_size  # no repeats within an epoch
    for b in data.batches(jax.random.key(3), arrays, batch_size):
        np.testing.assert_array_equal(b["x"].astype(np.int32), b["y"])


@pytest.mark.parametrize(
    "n, batch_size, start, chunk", [(37, 5, 0, 30), (37, 5, 13, 30), (12, 12, 7, 5), (40, 3, 95, 1)]
)
def test_chunk_orders_give_the_per_step_batches(n, batch_size, start, chunk):
    """The loop draws one permutation per epoch for a whole scan chunk (epoch_orders) and must
    pick the same batches as batch_indices does step by step."""
    key = jax.random.key(5)
    per_epoch = n // batch_size
    first_epoch = start // per_epoch
    orders = data.epoch_orders(key, first_epoch, (chunk - 1) // per_epoch + 2, n)
    steps = jnp.arange(start, start + chunk)
    np.testing.assert_array_equal(
        jax.vmap(lambda t: data.batch_from_orders(orders, first_epoch, t, batch_size))(steps),
        jax.vmap(lambda t: data.batch_indices(key, t, n, batch_size))(steps),
    )


def test_batches_mismatched_lengths():
    with pytest.raises(ValueError, match="leading"):
        next(data.batches(jax.random.key(0), {"x": np.zeros(3), "y": np.zeros(4)}, 2))


def test_toy_log_densities_integrate_to_one():
    """Riemann sums of exp(log_prob) on a fine grid are 1 (the densities are normalised)."""
    ticks = np.linspace(-3, 3, 1201, dtype=np.float32)
    gx, gy = np.meshgrid(ticks, ticks)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], 1))
    cell = (ticks[1] - ticks[0]) ** 2
    mass = float(jnp.sum(jnp.exp(data.checkerboard_log_prob(grid))) * cell)
    assert mass == pytest.approx(1.0, abs=1e-2)
    means = data.ring_means(8, 2.0)
    mass = float(jnp.sum(jnp.exp(data.gaussian_mixture_log_prob(grid, means, 0.2))) * cell)
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_toy_samples_lie_where_the_density_is():
    x, y = data.checkerboard(jax.random.key(0), 2000)
    assert bool(jnp.all(jnp.isfinite(data.checkerboard_log_prob(x))))
    x, y = data.eight_gaussians(jax.random.key(1), 4000)
    dist = jnp.linalg.norm(x - data.ring_means()[y], axis=1)
    assert float(jnp.max(dist)) < 6 * 0.02 * 2  # within ~6 std (2-d radius)
    assert np.bincount(np.asarray(y), minlength=8).min() > 400


def test_dequantize_and_binarize(key):
    x = jnp.asarray(np.arange(17) / 16, jnp.float32)
    y = data.dequantize(key, x, 17)
    np.testing.assert_array_equal(np.floor(np.asarray(y) * 17), np.arange(17))
    b = data.dynamic_binarize(key, jnp.full((20000,), 0.3))
    assert abs(float(b.mean()) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)
    np.testing.assert_array_equal(data.binarize(x), (x > 0.5).astype(jnp.float32))
    with pytest.raises(ValueError, match="levels"):
        data.dequantize(key, x, 1)
