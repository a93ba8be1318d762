"""Detector on real tiny models: batching, threshold, quality gate, self-check, CUDA parity."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from inspector.imaging.convert import Window, convert_image
from inspector.base.errors import ImageError, ModelError
from inspector.learn.infer import Detector, Prediction
from inspector.imaging.quality import measure_blur, measure_clipping
from inspector.learn.model import init_model, load_model

SIZE = (64, 32)
WINDOW = (1000, 4000)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "detector.safetensors"
    init_model(path, "global", WINDOW, SIZE, seed=0)
    return path


@pytest.fixture(scope="module")
def gated_path(tmp_path_factory):
    """The same kind of model with the quality gate on."""
    path = tmp_path_factory.mktemp("gated") / "detector.safetensors"
    init_model(path, "global", WINDOW, SIZE, seed=0)
    loaded = load_model(path)
    meta = dataclasses.replace(loaded.meta, quality={"blur_min": 40.0, "clipped_fraction": 0.5})
    from inspector.learn.model import save_model
    save_model(path, loaded.net, meta)
    return path


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1200, 3800, size=(128, 64), dtype=np.uint16) for _ in range(n)]


def blurred_image() -> np.ndarray:
    ramp = np.linspace(1800, 2600, 128)[:, None] + np.zeros((1, 64))
    return cv2.GaussianBlur(ramp, (15, 15), 5).astype(np.uint16)


def test_batches_equal_one_by_one(model_path):
    det = Detector.load(model_path, device="cpu", batch_size=2)
    imgs = images(5)
    batched = det.predict(imgs, paths=[f"img{i}.tif" for i in range(5)])
    single = Detector.load(model_path, device="cpu", batch_size=1)
    alone = [single.predict([img])[0] for img in imgs]
    assert [p.path for p in batched] == [f"img{i}.tif" for i in range(5)]
    assert all(a.path is None for a in alone)
    for b, a in zip(batched, alone):
        assert isinstance(b, Prediction) and b.reason is None
        assert 0.0 <= b.p_abnormal <= 1.0
        assert b.p_abnormal == pytest.approx(a.p_abnormal, abs=1e-5)
        assert b.verdict == ("abnormal" if b.p_abnormal >= 0.5 else "normal")
        assert b.threshold == 0.5 and b.seconds > 0
    assert det.device == torch.device("cpu") and len(det.sha256) == 64 and det.path == str(model_path)


def test_threshold_decides_the_verdict(model_path):
    det = Detector.load(model_path, device="cpu", batch_size=4)
    imgs = images(4, seed=1)
    probs = sorted(p.p_abnormal for p in det.predict(imgs))
    cut = (probs[1] + probs[2]) / 2
    strict = Detector(det.net, dataclasses.replace(det.meta, threshold=cut), det.sha256, det.device, det.path)
    verdicts = [p.verdict for p in sorted(strict.predict(imgs), key=lambda p: p.p_abnormal)]
    assert verdicts == ["normal", "normal", "abnormal", "abnormal"]


def test_prepare_uses_the_models_conversion(model_path):
    det = Detector.load(model_path, device="cpu")
    img = images(1)[0]
    assert np.array_equal(det.convert(img), convert_image(img, "global", Window(*WINDOW)))


def test_measures():
    sharp, soft = images(1)[0], blurred_image()
    assert measure_blur(sharp, Window(*WINDOW)) > 1000 > 40 > measure_blur(soft, Window(*WINDOW))
    img = np.full((10, 10), 2000, np.uint16)
    img[:2] = 500
    img[2:5] = 4000
    assert measure_clipping(img, Window(*WINDOW)) == (0.2, 0.3)


def test_quality_gate_sends_blurred_and_clipped_back(gated_path):
    det = Detector.load(gated_path, device="cpu", batch_size=4)
    clipped = images(1, seed=2)[0]
    clipped[: int(128 * 0.73)] = 4500  # 73% of rows beyond the window's high end
    sent: list[int] = []
    forward = det._forward
    det._forward = lambda x: sent.append(len(x)) or forward(x)  # what reaches the network
    preds = det.predict([blurred_image(), images(1)[0], clipped], paths=["soft.tif", "ok.tif", "bright.tif"])
    soft, ok, bright = preds
    assert soft.verdict == "rescan" and soft.p_abnormal is None
    variance = measure_blur(blurred_image(), Window(*WINDOW))
    assert soft.reason == f"blurred: variance of the Laplacian {variance:.1f} below the model's minimum 40.0"
    assert bright.verdict == "rescan" and bright.p_abnormal is None
    assert bright.reason == "badly exposed: 73% of pixels clipped at the window's high end"
    assert ok.verdict in ("normal", "abnormal") and ok.reason is None
    assert sent == [1]  # rescans never reach the network


def test_gate_off_without_quality_limits(model_path):
    det = Detector.load(model_path, device="cpu")
    (pred,) = det.predict([blurred_image()])
    assert pred.verdict in ("normal", "abnormal") and pred.p_abnormal is not None


def test_blank_capture_is_always_a_rescan(model_path):
    det = Detector.load(model_path, device="cpu")
    (pred,) = det.predict([np.full((40, 20), 2100, np.uint16)])
    assert pred.verdict == "rescan"
    assert pred.reason == "blank: every pixel has the value 2100; the capture holds no image"


def test_wrong_arrays_are_image_errors(model_path):
    det = Detector.load(model_path, device="cpu")
    with pytest.raises(ImageError) as err:
        det.predict([np.zeros((8, 8), np.uint8)])
    assert err.value.reason == "wrong_dtype"
    with pytest.raises(ImageError) as err:
        det.predict([np.zeros((8, 8, 3), np.uint16)])
    assert err.value.reason == "not_grayscale"


def test_self_check(model_path):
    det = Detector.load(model_path, device="cpu")
    p = det.self_check()
    assert 0.0 <= p <= 1.0 and p == det.self_check()
    check = det.check_image()
    assert check.shape == SIZE and check.dtype == np.uint16 and 1000 < check.mean() < 4000


def test_self_check_catches_a_broken_network(model_path):
    det = Detector.load(model_path, device="cpu")
    with torch.no_grad():
        det.net.head.bias.fill_(math.nan)
    with pytest.raises(ModelError, match="failed its self-check: P\\(abnormal\\) of the check image is nan"):
        det.self_check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda(model_path):
    with pytest.raises(ModelError, match='has no usable CUDA device; set model.device = "cpu" or "auto"'):
        Detector.load(model_path, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu(model_path):
    imgs = images(5, seed=4)
    cpu = Detector.load(model_path, device="cpu", batch_size=2).predict(imgs)
    gpu_det = Detector.load(model_path, device="cuda", batch_size=2)
    gpu = gpu_det.predict(imgs)
    assert gpu_det.device.type == "cuda"
    for c, g in zip(cpu, gpu):
        assert g.p_abnormal == pytest.approx(c.p_abnormal, abs=5e-3)
        assert math.isfinite(g.p_abnormal)
    assert 0.0 <= gpu_det.self_check() <= 1.0


@pytest.mark.gpu
def test_cuda_fp16_channels_last_keeps_the_cpu_verdicts(model_path):
    """On CUDA the Detector runs its network in fp16 (autocast) on channels_last tensors; the verdicts are the CPU's.

    The threshold is put in the middle of the widest gap between the CPU's probabilities, so every image lies
    at least half that gap away from it: more than twice the fp16 tolerance, so no verdict may flip.
    """
    imgs = images(16, seed=4)
    tol = 5e-3
    cpu = Detector.load(model_path, device="cpu", batch_size=4)
    ranked = np.sort([p.p_abnormal for p in cpu.predict(imgs)])
    widest = int(np.argmax(np.diff(ranked)))
    cut = float(ranked[widest] + ranked[widest + 1]) / 2
    assert (ranked[widest + 1] - ranked[widest]) / 2 > 2 * tol  # the set leaves room for an honest check
    gpu = Detector.load(model_path, device="cuda", batch_size=4)
    cpu.meta = dataclasses.replace(cpu.meta, threshold=cut)
    gpu.meta = dataclasses.replace(gpu.meta, threshold=cut)
    seen = []
    conv1 = gpu.net.backbone.conv1
    hook = conv1.register_forward_hook(lambda mod, args, out: seen.append(
        (args[0].device.type, args[0].is_contiguous(memory_format=torch.channels_last), out.dtype)))
    try:
        on_gpu = gpu.predict(imgs)
    finally:
        hook.remove()
    on_cpu = cpu.predict(imgs)
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen == [("cuda", True, torch.float16)] * 4  # 16 images in batches of 4, each the fp16 path
    assert [g.verdict for g in on_gpu] == [c.verdict for c in on_cpu]
    assert {c.verdict for c in on_cpu} == {"normal", "abnormal"}
    for c, g in zip(on_cpu, on_gpu):
        assert math.isfinite(g.p_abnormal) and g.p_abnormal == pytest.approx(c.p_abnormal, abs=tol)
        assert g.threshold == cut
