"""The embedding cache: keys, the file store, pass counting and resuming; real torch on 64x32 inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from inspector.learn.features import (CacheError, EmbedItem, EmbedStats, FeatureStore, apply_flip,
                                backbone_fingerprint, default_cache_dir, embed_dataset, feature_key, flip_batch,
                                require_frozen)
from inspector.imaging.modelmeta import FULL_DIM
from inspector.learn.model import build_detector, preprocess_batch

CPU = torch.device("cpu")
SIZE = (64, 32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_detector(weights="none", freeze="paper").eval()


def images8(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(70, 40, 3), dtype=np.uint8) for _ in range(n)]


def base_key(**changes) -> str:
    args = dict(content_sha256="a" * 64, method="global", window=(1700, 2800), flip="none", input_size=SIZE,
                backbone_sha256="b" * 64, clahe=(2.0, 8))
    args.update(changes)
    return feature_key(**args)


def test_key_changes_with_everything_that_changes_the_feature():
    key = base_key()
    assert key == base_key()
    changed = [base_key(content_sha256="c" * 64), base_key(window=(1700, 2900)), base_key(flip="h"),
               base_key(flip="v"), base_key(flip="hv"), base_key(input_size=(2000, 1000)),
               base_key(backbone_sha256="d" * 64), base_key(method="mix")]
    assert len(set(changed) | {key}) == len(changed) + 1
    # settings a method does not use do not split the cache
    assert base_key(method="local", window=(1, 2)) == base_key(method="local", window=None)
    assert base_key(clahe=(3.0, 8)) == key
    assert base_key(method="clahe", clahe=(3.0, 8)) != base_key(method="clahe", clahe=(2.0, 8))
    with pytest.raises(CacheError, match="unknown flip 'x'; one of none, h, v, hv"):
        base_key(flip="x")


def test_backbone_fingerprint_tracks_backbone_weights_only(net):
    torch.manual_seed(0)
    same = build_detector(weights="none", freeze="paper")
    torch.manual_seed(1)
    other = build_detector(weights="none", freeze="paper")
    assert backbone_fingerprint(same) == backbone_fingerprint(net)
    assert backbone_fingerprint(other) != backbone_fingerprint(net)
    torch.manual_seed(0)
    retrained_head = build_detector(weights="none", freeze="paper")
    with torch.no_grad():
        retrained_head.head.weight.add_(1.0)
        retrained_head.standardize.mean.add_(1.0)
    assert backbone_fingerprint(retrained_head) == backbone_fingerprint(net)
    torch.manual_seed(0)
    paper = build_detector(weights="none", freeze="paper", head="paper")  # another head, the same backbone
    with torch.no_grad():
        paper.fc.bias.add_(1.0)
    assert backbone_fingerprint(paper) == backbone_fingerprint(net)


def test_store_round_trip_atomic_and_corrupt_entries(tmp_path):
    store = FeatureStore(tmp_path / "cache")
    assert store.load("ab" * 32) is None
    feature = np.arange(FULL_DIM, dtype=np.float32)
    store.save("ab" * 32, feature)
    assert np.array_equal(store.load("ab" * 32), feature)
    assert [p.name for p in (tmp_path / "cache" / "ab").iterdir()] == ["ab" * 32 + ".npy"]  # no temp left
    store.path("cd" * 32).parent.mkdir(parents=True)
    store.path("cd" * 32).write_bytes(b"\x93NUMPY half a file")  # an interrupted foreign write
    assert store.load("cd" * 32) is None
    assert default_cache_dir("", tmp_path / "ds") == tmp_path / "ds" / ".inspector-cache"
    assert default_cache_dir(str(tmp_path / "c"), tmp_path / "ds") == tmp_path / "c"


def test_unwritable_store_says_what_to_do(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")  # a file where the folder should be: fails even for root
        store = FeatureStore(blocker)
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        store = FeatureStore(tmp_path / "ro")
    with pytest.raises(CacheError, match="cannot write the embedding cache at .*set train.cache_dir to a writable"):
        store.save("ef" * 32, np.zeros(FULL_DIM, dtype=np.float32))


def test_flip_batch_matches_flipping_each_sample():
    x = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)
    out = flip_batch(x, ["h", "v"])
    assert torch.equal(out[0], torch.flip(x[0], [2]))
    assert torch.equal(out[1], torch.flip(x[1], [1]))
    assert torch.equal(apply_flip(x, "hv"), torch.flip(x, [2, 3]))
    assert flip_batch(x, ["none", "none"]) is x


def test_embed_counts_passes_and_resume_computes_nothing(net, tmp_path):
    imgs = images8(3)
    loads = []

    def load(i):
        loads.append(i)
        return imgs[i]

    store = FeatureStore(tmp_path / "cache")
    items = [EmbedItem(f"{i}{flip}".ljust(64, "0"), i, flip) for i in range(3) for flip in ("none", "hv")]
    items.append(items[0])  # the same key twice: one pass
    stats = EmbedStats()
    feats = embed_dataset(net, items, load, SIZE, CPU, store, stats, batch_size=4)
    assert feats.shape == (7, FULL_DIM) and np.isfinite(feats).all()
    assert stats.passes == 6 and stats.hits == 0
    assert np.array_equal(feats[0], feats[6])
    assert sorted(set(loads)) == [0, 1, 2]
    with torch.no_grad():
        direct = net.embed_all(torch.flip(preprocess_batch([imgs[1]], SIZE), [2, 3])).numpy()[0]
    assert np.allclose(feats[3], direct, rtol=1e-3, atol=1e-4)  # item 3 = image 1, flip hv
    # a resumed run: everything from the store, nothing through the backbone, no image read
    loads.clear()
    again = EmbedStats()
    feats2 = embed_dataset(net, items, load, SIZE, CPU, store, again, batch_size=4)
    assert again.passes == 0 and again.hits == 7 and loads == []
    assert np.array_equal(feats, feats2)
    # interrupted half-way: only the missing keys are computed
    os.unlink(store.path(items[2].key))
    partial = EmbedStats()
    embed_dataset(net, items, load, SIZE, CPU, store, partial, batch_size=4)
    assert partial.passes == 1 and loads == [1]


def test_require_frozen_explains_full_fine_tuning():
    require_frozen("paper")
    with pytest.raises(CacheError) as info:
        require_frozen("none")
    assert str(info.value) == (
        "model.freeze = 'none' trains every backbone layer, so its features change at each step and "
        "cannot be cached; use --no-cache (the full forward pass every epoch) or set model.freeze = 'paper'")
