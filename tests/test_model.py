"""The detector network and its artifact: real torch on tiny inputs, real safetensors files in tmp_path."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from inspector.base.errors import ModelError
from inspector.learn.model import (
    ElectrodeNet, build_detector, init_model, load_model, preprocess_batch, resolve_device, save_model, tensors_sha256,
)
from inspector.imaging.modelmeta import FULL_DIM, Embedding, ModelMeta, read_meta

SIZE = (64, 32)


@pytest.fixture(scope="module")
def net() -> ElectrodeNet:
    torch.manual_seed(0)
    return build_detector("none", "paper").eval()


def meta_for(**kw) -> ModelMeta:
    base = dict(method="global", window=[1500, 3000], input_size=list(SIZE))
    base.update(kw)
    return ModelMeta(**base)


def batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_finite(net):
    with torch.no_grad():
        logits = net(batch(3))
        feats = net.embed(batch(3))
    assert net.embedding == Embedding(("layer2", "layer3"), ("mean",))  # the default
    assert logits.shape == (3, 2) and feats.shape == (3, 128 + 256)
    assert torch.isfinite(logits).all() and torch.isfinite(feats).all()
    assert isinstance(net.head, torch.nn.Linear) and net.head.in_features == 384


def test_paper_head_is_the_published_network():
    net = build_detector("none", "paper", head="paper").eval()
    with torch.no_grad():
        assert net.embed(batch(3)).shape == (3, 512) and net(batch(3)).shape == (3, 2)
    assert net.fc.in_features == 512 and net.fc.out_features == 1000
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [512, 256, 2]
    with pytest.raises(ModelError, match="head = 'paper' is the published network"):
        build_detector("none", "paper", Embedding(("layer2",), ("mean",)), head="paper")


def test_full_layout_holds_every_embedding(net):
    """The cache keeps all stages under all poolings; any embedding is a choice of its columns."""
    x = batch(2, seed=4)
    with torch.no_grad():
        full = net.embed_all(x)
        assert full.shape == (2, FULL_DIM)
        for emb in (Embedding(("layer4",), ("mean",)), Embedding(("layer1", "layer3"), ("max", "std")),
                    Embedding(("layer3", "layer2"), ("std", "mean"))):
            other = build_detector("none", "paper", emb)
            other.backbone.load_state_dict(net.backbone.state_dict())
            other.eval()
            assert torch.allclose(other.select(full), other.embed(x), rtol=1e-5, atol=1e-5), emb
    with pytest.raises(ModelError, match="model.features"):
        Embedding(("layer5",), ("mean",))
    with pytest.raises(ModelError, match="model.pooling"):
        Embedding(("layer2",), ("median",))


def test_backbone_runs_only_as_deep_as_the_features_need(net):
    shallow = build_detector("none", "paper", Embedding(("layer2",), ("mean",))).eval()

    class Forbidden(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("layer3 ran although the features end at layer2")

    shallow.backbone.layer3 = Forbidden()
    with torch.no_grad():
        assert shallow(batch(1)).shape == (1, 2)


def test_standardize_centres_and_scales_training_features(net):
    torch.manual_seed(2)
    fresh = build_detector("none", "paper")
    feats = torch.randn(40, fresh.embedding.dim) * 30 + 500
    feats[:, 7] = 3.0  # constant over the training set: carries nothing, must not blow up
    fresh.standardize.fit(feats)
    z = fresh.standardize(feats)
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-3)
    kept = [i for i in range(z.shape[1]) if i != 7]
    assert torch.allclose(z.std(0, correction=0)[kept], torch.ones(len(kept)), atol=1e-3)
    assert fresh.standardize.scale[7] == 0 and torch.isfinite(fresh.standardize(feats + 100)).all()


def test_embed_then_classify_equals_forward(net):
    x = batch()
    with torch.no_grad():
        assert torch.allclose(net.classify(net.embed(x)), net(x), atol=1e-6)


def test_paper_freeze_trains_only_fc_and_head():
    net = build_detector("none", "paper")
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"head"}  # the linear head has no fc of its own
    assert all(not p.requires_grad for p in net.backbone.parameters())
    paper = build_detector("none", "paper", head="paper")
    assert {n.split(".")[0] for n, p in paper.named_parameters() if p.requires_grad} == {"fc", "head"}


def test_no_freeze_trains_everything():
    net = build_detector("none", "none")
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    assert net.backbone.training


def test_frozen_backbone_keeps_bn_stats_in_train_mode():
    torch.manual_seed(1)
    net = build_detector("none", "paper")
    net.train()
    assert net.training and net.head.training and not net.backbone.training
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x = batch(2, seed=3) * 5 + 2
    f1 = net.embed(x)
    net(x).sum().backward()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    net.eval()
    assert torch.allclose(f1, net.embed(x), atol=1e-6)  # embed is the same in train and eval mode


def test_unknown_freeze_is_an_error():
    with pytest.raises(ModelError, match="model.freeze = 'all' is unknown"):
        build_detector("none", "all")


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    net = build_detector("none", "paper", Embedding(("layer1", "layer3"), ("mean", "std"))).eval()
    with torch.no_grad():
        net.standardize.fit(net.embed(batch(6, seed=9)))
    path = tmp_path / "m" / "detector.safetensors"
    sha = save_model(path, net, meta_for(threshold=0.3, threshold_source="out-of-fold, target recall 0.95",
                                         quality={"blur_min": 40.0, "clipped_fraction": 0.5}, trained=True,
                                         metrics={"roc_auc": np.float64(0.9), "counts": np.array([3, 4])}))
    loaded = load_model(path)
    assert loaded.sha256 == sha and len(sha) == 64
    assert loaded.meta.window == (1500, 3000) and loaded.meta.input_size == SIZE
    assert loaded.meta.threshold == 0.3 and loaded.meta.quality["blur_min"] == 40.0
    assert loaded.meta.metrics == {"roc_auc": 0.9, "counts": [3, 4]}
    assert loaded.meta.created_at.endswith("+00:00") and len(loaded.meta.tensors_sha256) == 64
    assert (loaded.meta.features, loaded.meta.pooling, loaded.meta.head) == (("layer1", "layer3"), ("mean", "std"),
                                                                              "linear")
    assert torch.equal(loaded.net.standardize.mean, net.standardize.mean)  # the statistics travel in the file
    x = batch(2, seed=5)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.net(x))
    assert read_meta(path) == loaded.meta
    assert [p.name for p in path.parent.iterdir()] == ["detector.safetensors"]  # no temp file left behind


def test_paper_model_written_before_standardization_loads(tmp_path):
    """A file of the published network without standardize tensors (older inspector) still scores."""
    from safetensors.torch import save_file

    from inspector.learn.model import META_KEY, artifact_sha256

    torch.manual_seed(4)
    net = build_detector("none", "paper", head="paper").eval()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("standardize.")}
    meta = meta_for()  # features, pooling and head absent from old metadata: the paper's defaults
    meta = ModelMeta.from_json(json.dumps({k: v for k, v in json.loads(meta.to_json()).items()
                                           if k not in ("features", "pooling", "head")}))
    import dataclasses
    meta = dataclasses.replace(meta, tensors_sha256=artifact_sha256(tensors, meta))
    save_file(tensors, tmp_path / "old.safetensors", metadata={META_KEY: meta.to_json()})
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.meta.head == "paper"
    with torch.no_grad():
        assert torch.equal(loaded.net(batch(2)), net(batch(2)))


def _saved(net, tmp_path) -> tuple:
    path = tmp_path / "detector.safetensors"
    save_model(path, net, meta_for())
    return path, bytearray(path.read_bytes())


def test_tampered_tensor_byte_is_rejected(net, tmp_path):
    path, data = _saved(net, tmp_path)
    data[len(data) - 1000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert str(err.value) == (f"model file {path} is damaged or was modified after it was written "
                              f"(checksum mismatch); retrain or restore it")


def test_edited_threshold_in_the_header_is_rejected(net, tmp_path):
    """Lowering the decision threshold by hand is tampering too: the digest covers the metadata."""
    path, data = _saved(net, tmp_path)
    old, new = b'\\"threshold\\": 0.5', b'\\"threshold\\": 0.1'
    at = data.find(old)
    assert at > 0, "threshold not found in the header"
    data[at:at + len(old)] = new
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(path)


def test_truncated_file_is_rejected(net, tmp_path):
    path, data = _saved(net, tmp_path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelError, match="is damaged or was modified"):
        load_model(path)
    read_meta(path)  # the header alone is intact: info still works
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(ModelError, match="header length does not fit the file"):
        read_meta(path)


@pytest.mark.parametrize("content", [b"", b"hello", b"\xff" * 64, b"GIF89a" + b"\0" * 100])
def test_garbage_file_is_rejected(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=f"model file {path} is damaged"):
        load_model(path)


def test_safetensors_without_inspector_metadata(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match="without inspector metadata"):
        load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist; train one with `inspector train`"):
        load_model(tmp_path / "nope.safetensors")


def test_weights_from_a_resnet34_state_dict(tmp_path):
    torch.manual_seed(7)
    resnet = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(resnet.state_dict(), path)
    net = build_detector(str(path), "paper")
    assert torch.equal(net.backbone.conv1.weight, resnet.conv1.weight)
    assert torch.equal(net.backbone.layer4[2].conv2.weight, resnet.layer4[2].conv2.weight)
    paper = build_detector(str(path), "paper", head="paper")
    assert torch.equal(paper.fc.weight, resnet.fc.weight)  # the published network trains on from the ImageNet fc


def test_weights_from_a_wrong_file(tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ModelError, match="does not fit a torchvision resnet34"):
        build_detector(str(wrong))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="is not a torch state_dict"):
        build_detector(str(text))
    with pytest.raises(ModelError, match="does not exist"):
        build_detector(str(tmp_path / "missing.pth"))


def test_imagenet_offline_gives_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as err:
        build_detector("imagenet")
    msg = str(err.value)
    assert msg.startswith("model.weights = 'imagenet' needs a download of torchvision's ResNet-34 weights, which failed")
    assert "Temporary failure in name resolution" in msg
    assert msg.endswith("download resnet34-b627a593.pth elsewhere and set model.weights to its local path")


def test_imagenet_from_the_hub_cache_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried the network"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    resnet = torchvision.models.resnet34(weights=None)
    torch.save(resnet.state_dict(), cached)
    net = build_detector("imagenet")
    assert torch.equal(net.backbone.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)


def test_preprocess_batch_resizes_and_normalizes():
    white = np.full((128, 64, 3), 255, np.uint8)
    small = np.zeros((16, 8, 3), np.uint8)
    x = preprocess_batch([white, small], SIZE)
    assert x.shape == (2, 3, *SIZE) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], torch.full(SIZE, (1 - 0.485) / 0.229))
    assert torch.allclose(x[1, 2], torch.full(SIZE, -0.406 / 0.225))
    with pytest.raises(ModelError, match="HxWx3 uint8"):
        preprocess_batch([np.zeros((8, 8), np.uint16)], SIZE)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="is not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match='set model.device = "cpu" or "auto"'):
            resolve_device("cuda")


def test_init_model_writes_an_untrained_artifact(tmp_path):
    out = tmp_path / "init.safetensors"
    sha = init_model(out, "naive", None, SIZE, seed=4)
    loaded = load_model(out)
    assert loaded.sha256 == sha
    assert loaded.meta.trained is False and loaded.meta.method == "naive" and loaded.meta.window is None
    init_model(tmp_path / "again.safetensors", "naive", None, SIZE, seed=4)
    again = load_model(tmp_path / "again.safetensors")
    same = tensors_sha256(again.net.state_dict()) == tensors_sha256(loaded.net.state_dict())
    assert same, "the same seed must give the same weights"


@pytest.mark.gpu
@pytest.mark.parametrize("size", [SIZE, (512, 256)])
def test_cuda_fp16_features_match_the_cpu_ones(net, size):
    """The embedding cache's key names no device: features a CUDA machine computed (fp16 autocast,
    channels_last) stand in for the CPU's float32 ones. They must agree to within fp16 rounding, and stay
    finite at a larger input, where the random backbone's activations grow into the hundreds."""
    import copy

    from inspector.learn.features import embed_tensor, prepare_for_device

    x = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(5))
    cuda = torch.device("cuda")
    gpu_net = prepare_for_device(copy.deepcopy(net), cuda).eval()
    with torch.inference_mode():
        ref = embed_tensor(net, x, torch.device("cpu"), full=True)
        got = embed_tensor(gpu_net, x, cuda, full=True).cpu()
    assert got.dtype == torch.float32 and got.shape == ref.shape == (4, FULL_DIM)
    assert torch.isfinite(got).all()
    relative = (got - ref).norm(dim=1) / ref.norm(dim=1)
    assert relative.max().item() < 1e-2, relative  # fp16 keeps ~3 decimal digits; measured about 1e-3
