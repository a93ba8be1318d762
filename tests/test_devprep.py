"""devprep.py: the torch preparation (run here on the CPU) equals prepare.prepare, gate texts included, and a
Detector preparing on its device gives the CPU path's verdicts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from inspector.imaging import quality
from inspector.imaging.convert import Conversion, Window, _window_lut
from inspector.learn.devprep import DevicePrep, _Cache
from inspector.base.errors import ImageError, InspectorError
from inspector.learn.infer import Detector
from inspector.learn.model import IMAGENET_MEAN, IMAGENET_STD, init_model, normalize
from inspector.imaging.prepare import InputSpec, prepare

from image_files import textured_scan as scan

WINDOW = Window(1700, 2800)
DEVICE_METHODS = ("naive", "global", "local", "mix")
SIZES = [(128, 64), (97, 211), (150, 280), (100, 56), (300, 560), (301, 561), (400, 700), (200, 900), (600, 300)]



def levels(x: torch.Tensor) -> np.ndarray:
    """Undo the normalization: (N, 3, h, w) -> (N, h, w, 3) whole grey levels."""
    mean = torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.int64)


def compare(images16: list[np.ndarray], spec: InputSpec, device: str = "cpu") -> tuple[int, float]:
    """Max grey-level difference and share of differing values against prepare.prepare; reasons must agree."""
    cpu = [prepare(img, spec) for img in images16]
    x, reasons = DevicePrep(spec, device).run(images16)
    assert reasons == [p.reason for p in cpu]
    expected = [p.img8 for p in cpu if p.reason is None]
    if not expected:
        assert x is None
        return 0, 0.0
    x = x.cpu()
    assert x.shape == (len(expected), 3, *spec.input_size) and x.dtype == torch.float32
    ref = np.stack(expected).astype(np.int64)
    diff = np.abs(levels(x) - ref)
    if diff.max() == 0:  # the same grey levels: the same network input, bit for bit
        assert torch.equal(x, normalize(torch.from_numpy(np.stack(expected))))
    return int(diff.max()), float((diff > 0).mean())


@pytest.mark.parametrize("method", DEVICE_METHODS)
@pytest.mark.parametrize("input_size", SIZES)
def test_device_path_equals_prepare_for_every_method_and_size(method, input_size):
    """Shrinking by whole and fractional factors (INTER_AREA), enlarging and mixed (INTER_LINEAR)."""
    worst, share = compare([scan(), scan(seed=1)], InputSpec(Conversion(method, WINDOW), input_size))
    assert worst <= 1 and share < 0.01
    assert worst == 0  # what OpenCV's arithmetic, copied, gives here


def test_images_of_different_sizes_in_one_batch():
    imgs = [scan(300, 560), scan(257, 481, seed=2), scan(64, 40, seed=3)]
    worst, _ = compare(imgs, InputSpec(Conversion("mix", WINDOW), (128, 64)))
    assert worst <= 1


def test_gate_reasons_equal_quality_check():
    limits = {"blur_min": 40.0, "clipped_fraction": 0.3, "height": [250, 350], "width": [500, 600]}
    sharp = scan()
    ramp = np.linspace(1800, 2600, 300)[:, None] + np.zeros((1, 560))
    blurred = cv2.GaussianBlur(ramp, (15, 15), 5).astype(np.uint16)
    clipped_high = scan(seed=4)
    clipped_high[:200] = 4000
    clipped_both = scan(seed=5)
    clipped_both[:50], clipped_both[50:100] = 100, 4000  # 17% + 17%: only the sum is over
    blank = np.full((300, 560), 2100, np.uint16)
    small = scan(100, 560, seed=6)
    imgs = [sharp, blurred, clipped_high, clipped_both, blank, small, scan(seed=7)]
    for method in DEVICE_METHODS:
        window = None if method in ("naive", "local") else WINDOW
        spec = InputSpec(Conversion(method, window), (128, 64), quality=limits)
        expected = [quality.check(img, limits, window) for img in imgs]
        _, reasons = DevicePrep(spec, "cpu").run(imgs)
        assert reasons == expected, method
    with_window = [quality.check(img, limits, WINDOW) for img in imgs]
    assert with_window[0] is None and with_window[1].startswith("blurred")
    assert with_window[2] == "badly exposed: 67% of pixels clipped at the window's high end"
    assert with_window[3].startswith("badly exposed: 3") and "% low, " in with_window[3]
    assert with_window[4].startswith("blank") and with_window[5].startswith("unexpected size")


def test_laplacian_variance_equals_measure_blur():
    dp = DevicePrep(InputSpec(Conversion("global", WINDOW), (64, 32)), "cpu")
    from inspector.learn.devprep import variance_from_sums

    for img16 in (scan(), scan(31, 17, seed=1), scan(2, 5, seed=2), scan(1, 9, seed=3)):
        gray = quality.gate_image(img16, WINDOW)
        s1, s2 = dp._laplacian_sums(torch.from_numpy(gray.astype(np.int32))).tolist()
        ours = variance_from_sums(gray.size, s1, s2)
        assert ours == pytest.approx(quality.measure_blur(img16, WINDOW), rel=1e-12)
        assert ours == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var(), rel=1e-9, abs=1e-9)


def test_local_window_without_contrast_is_the_same_rescan():
    flat = np.full((300, 560), 2000, np.uint16)
    flat[:3, :3] = 2001
    for method in ("local", "mix"):
        spec = InputSpec(Conversion(method, WINDOW), (128, 64))
        x, reasons = DevicePrep(spec, "cpu").run([flat, scan()])
        assert reasons[0] == prepare(flat, spec).reason and reasons[0].startswith("cannot convert")
        assert reasons[1] is None and x.shape[0] == 1


def test_supports_and_tables():
    assert not DevicePrep.supports(InputSpec(Conversion("clahe", WINDOW), (64, 32)))
    assert all(DevicePrep.supports(InputSpec(Conversion(m, WINDOW), (64, 32))) for m in DEVICE_METHODS)
    with pytest.raises(InspectorError, match="prepared on the CPU"):
        DevicePrep(InputSpec(Conversion("clahe", WINDOW), (64, 32)), "cpu")
    dp = DevicePrep(InputSpec(Conversion("global", WINDOW), (64, 32)), "cpu")
    assert np.array_equal(dp._lut((1700, 2800)).numpy(), _window_lut(1700, 2800))
    assert dp._lut((1700, 2800)) is dp._lut((1700, 2800))  # uploaded once
    cache = _Cache()
    for i in range(40):
        cache.get_or(i, lambda: i)
    assert len(cache) == 16


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("devprep-model") / "detector.safetensors"
    init_model(path, "global", (1700, 2800), (128, 64), weights="none", seed=0)
    return path


def test_detector_on_the_device_path_gives_the_cpu_verdicts(model_path):
    imgs = [scan(seed=s) for s in range(5)] + [np.full((300, 560), 7, np.uint16), scan(257, 481, seed=9)]
    names = [f"img{i}.tif" for i in range(len(imgs))]
    cpu = Detector.load(model_path, device="cpu", batch_size=2, prepare_on="cpu")
    dev = Detector.load(model_path, device="cpu", batch_size=2, prepare_on="device")
    assert cpu.devprep is None and dev.devprep is not None
    assert Detector.load(model_path, device="cpu").devprep is None  # auto: the CPU path on a CPU device
    prepared = dev.prepare(imgs[0])
    assert prepared.img8 is None and prepared.reason is None and prepared.img16 is imgs[0]
    on_cpu, on_dev = cpu.predict(imgs, names), dev.predict(imgs, names)
    assert [p.path for p in on_dev] == names
    assert [(p.verdict, p.reason) for p in on_dev] == [(p.verdict, p.reason) for p in on_cpu]
    assert on_dev[5].verdict == "rescan" and on_dev[5].reason.startswith("blank")
    for c, d in zip(on_cpu, on_dev):
        if c.p_abnormal is not None:
            assert d.p_abnormal == pytest.approx(c.p_abnormal, abs=1e-5)
    # a chunk holding both kinds: CPU-prepared entries and raw ones
    mixed = [cpu.prepare(imgs[0]), dev.prepare(imgs[1]), cpu.prepare(imgs[5]), dev.prepare(imgs[2])]
    got = dev.score_prepared(mixed)
    assert [g.p_abnormal for g in got] == pytest.approx([on_cpu[i].p_abnormal for i in (0, 1, 5, 2)], abs=1e-5)
    # raw entries handed to a CPU-path detector are prepared on the CPU
    assert [g.verdict for g in cpu.score_prepared([dev.prepare(imgs[1])])] == [on_cpu[1].verdict]
    with pytest.raises(ImageError):
        dev.predict([np.zeros((8, 8), np.uint8)])


def test_prepare_on_is_checked(model_path):
    with pytest.raises(InspectorError, match="prepare_on must be one of"):
        Detector.load(model_path, device="cpu", prepare_on="gpu")


@pytest.mark.gpu
def test_cuda_device_path_equals_prepare(model_path):
    for method in DEVICE_METHODS:
        for size in ((128, 64), (97, 211), (400, 700)):
            spec = InputSpec(Conversion(method, WINDOW), size)
            worst, share = compare([scan(), scan(257, 481, seed=2)], spec, "cuda")
            assert worst <= 1 and share < 0.01
    limits = {"blur_min": 40.0, "clipped_fraction": 0.3}
    flat = np.full((300, 560), 2100, np.uint16)
    imgs = [scan(), flat, scan(seed=3)]
    spec = InputSpec(Conversion("global", WINDOW), (128, 64), quality=limits)
    assert DevicePrep(spec, "cuda").run(imgs)[1] == [quality.check(i, limits, WINDOW) for i in imgs]
    cpu = Detector.load(model_path, device="cpu", batch_size=2)
    gpu = Detector.load(model_path, device="cuda", batch_size=2)
    assert gpu.devprep is not None and gpu.devprep.cuda
    imgs = [scan(seed=s) for s in range(5)]
    for c, g in zip(cpu.predict(imgs), gpu.predict(imgs)):
        assert g.p_abnormal == pytest.approx(c.p_abnormal, abs=5e-3)
