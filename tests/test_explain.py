"""Grad-CAM on a tiny random ResNet-34: mechanics, an independent hook-based reference, overlays, recording."""

from __future__ import annotations

import copy
import threading

import cv2
import numpy as np
import pytest
import torch

from image_files import sample_image16
from inspector.base.errors import InspectorError
from inspector.learn.explain import explain_image, gradcam, gradcam_logits, heatmap_path, render_overlay, save_overlay
from inspector.station.heatmaps import HeatmapQueue, explain_and_record
from inspector.learn.infer import Detector
from inspector.learn.model import build_detector, init_model
from inspector.store.store import open_store
from tests.store_rows import record_verdict

INPUT = (96, 64)  # layer4 gives a 3x2 map: small, yet enough cells for the map to vary


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)  # a seed whose abnormal logit has positive evidence (a non-zero map)
    return build_detector("none").eval()


def make_input(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, *INPUT, generator=torch.Generator().manual_seed(seed))


def reference_gradcam(net: torch.nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Textbook Grad-CAM with hooks on a private, fully trainable copy (the way the method is usually written)."""
    ref = copy.deepcopy(net).eval()
    for p in ref.parameters():
        p.requires_grad_(True)
    store: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = ref.backbone.layer4.register_forward_hook(keep)
    ref(x)[0, target].backward()
    handle.remove()
    a, g = store["a"], store["a"].grad
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    # ReLU after resizing: maps of several stages are summed at the input size before it (explain.py)
    cam = torch.relu(torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0])
    cam = cam.detach()
    return (cam / cam.max()).numpy() if cam.max() > 0 else np.zeros(x.shape[2:], np.float32)


def test_gradcam_map_shape_range_and_untouched_model(net):
    flags = [p.requires_grad for p in net.parameters()]
    assert not any(p.requires_grad for p in net.backbone.parameters())  # the paper's frozen backbone
    cam = gradcam(net, make_input(1))
    assert cam.shape == INPUT and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    assert [p.requires_grad for p in net.parameters()] == flags
    for stage in (net.backbone.layer2, net.backbone.layer3, net.backbone.layer4):
        assert not stage._forward_hooks and not stage._backward_hooks and not stage._forward_pre_hooks
    assert all(p.grad is None for p in net.parameters())  # no gradient left behind on the weights
    assert net.training is False


def test_gradcam_restores_training_mode_and_leaves_bn_statistics(net):
    trained = copy.deepcopy(net).train()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    gradcam(trained, make_input(1))
    assert trained.training is True and trained.head.training is True
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradcam_matches_a_hook_based_reference_and_the_network_output():
    """The published network (layer4 only): the textbook method, hooks and all, gives the same map."""
    torch.manual_seed(0)
    paper = build_detector("none", head="paper").eval()
    x = make_input(1)
    for target in (0, 1):
        cam, logits = gradcam_logits(paper, x, target=target)
        np.testing.assert_allclose(cam, reference_gradcam(paper, x, target), atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logits, paper(x))


def test_gradcam_follows_the_feature_stages(net):
    """Linear head on mean-pooled layer2+layer3: the map is each position's share of the logit, in closed form."""
    fitted = copy.deepcopy(net)
    with torch.no_grad():
        fitted.standardize.fit(fitted.embed(torch.cat([make_input(s) for s in range(5)])))
    x = make_input(1)
    cam, logits = gradcam_logits(fitted, x, target=1)
    with torch.no_grad():
        torch.testing.assert_close(logits, fitted(x))
        maps = fitted.stage_maps(x, ("layer2", "layer3"))
        w = fitted.head.weight[1] * fitted.standardize.scale  # d logit / d pooled feature
        expected = torch.zeros(INPUT)
        offset = 0
        for stage in ("layer2", "layer3"):
            a = maps[stage]
            part = (w[offset:offset + a.shape[1], None, None] * a[0]).sum(0, keepdim=True)[None]
            expected += torch.nn.functional.interpolate(part, size=INPUT, mode="bilinear", align_corners=False)[0, 0]
            offset += a.shape[1]
        expected = torch.relu(expected)
        expected = (expected / expected.max()).numpy()
    np.testing.assert_allclose(cam, expected, atol=1e-4)


def test_gradcam_map_changes_with_the_input(net):
    a, b = gradcam(net, make_input(1)), gradcam(net, make_input(2))
    assert np.abs(a - b).max() > 0.05


def test_gradcam_inside_inference_mode(net):
    x = make_input(1)
    with torch.inference_mode():
        cam = gradcam(net, x)
    np.testing.assert_allclose(cam, gradcam(net, x), atol=1e-6)


def test_gradcam_refuses_a_batch(net):
    with pytest.raises(InspectorError, match=r"one image as a \(1, 3, H, W\) tensor, got shape \(2, 3, 96, 64\)"):
        gradcam(net, torch.zeros(2, 3, *INPUT))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    init_model(path, "global", (1000, 4000), INPUT, seed=0)
    return Detector.load(path, device="cpu")


def test_explain_image_at_native_size_agrees_with_predict(detector):
    img16 = sample_image16(200, 120, seed=3)
    exp = explain_image(detector, img16)
    assert exp.img8.shape == (200, 120, 3) and exp.cam.shape == (200, 120)
    assert np.isfinite(exp.cam).all() and 0.0 <= exp.cam.min() and exp.cam.max() <= 1.0
    (pred,) = detector.predict([img16])
    assert exp.p_abnormal == pytest.approx(pred.p_abnormal, abs=1e-5)
    assert exp.verdict == pred.verdict and exp.reason is None


def test_explain_image_reports_the_quality_gate(detector):
    exp = explain_image(detector, np.full((50, 40), 2000, np.uint16))
    assert exp.verdict == "rescan" and exp.reason.startswith("blank: every pixel has the value 2000")


def test_save_overlay_writes_the_converted_image_size(tmp_path):
    img8 = np.dstack([np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (50, 1))] * 3)
    cam = np.zeros((6, 7), np.float32)
    cam[0, 0] = 1.0  # a coarse map: must be resized to the image
    out = save_overlay(img8, cam, tmp_path / "sub" / "overlay.png")
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written.shape == (50, 70, 3) and written.dtype == np.uint8
    np.testing.assert_array_equal(written, render_overlay(img8, cam))  # PNG is lossless
    assert not np.array_equal(written, img8)  # the heat map is visible
    # strongest evidence top-left is red (BGR), no evidence bottom-right is blue-tinted
    assert written[0, 0, 2] > written[0, 0, 0] and written[-1, -1, 0] > written[-1, -1, 2]
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]  # no temp file left


def test_save_overlay_refuses_a_gray_image(tmp_path):
    with pytest.raises(InspectorError, match=r"HxWx3 uint8 image, got uint8 of shape \(5, 5\)"):
        save_overlay(np.zeros((5, 5), np.uint8), np.zeros((5, 5)), tmp_path / "x.png")


def test_heatmap_path_layout(tmp_path):
    sha = "ab" + "0" * 62
    assert heatmap_path(tmp_path, sha) == tmp_path / "heatmaps" / "ab" / f"{sha}.png"


def test_explain_and_record_on_a_thread_beside_scoring(detector, tmp_path):
    img16 = sample_image16(200, 120, seed=5)
    sha = "cd" * 32
    before = [p.p_abnormal for p in detector.predict([sample_image16(200, 120, seed=s) for s in range(4)])]
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        record_verdict(store, "/cap/a.tif", sha, 10, 1, detector.sha256, 0.9, "abnormal", None, 0.5, "global",
                             0.1, 0.1)
        result: dict[str, object] = {}

        def work() -> None:
            try:
                result["path"] = explain_and_record(detector, store, img16, sha, tmp_path / "state")
            except BaseException as exc:  # pragma: no cover - reported by the assert below
                result["error"] = exc

        thread = threading.Thread(target=work)
        thread.start()
        during = []
        while thread.is_alive() and len(during) < 20:  # score on the same network meanwhile
            during.append([p.p_abnormal for p in detector.predict([sample_image16(200, 120, seed=s)
                                                                   for s in range(4)])])
        thread.join(timeout=60)
        assert not thread.is_alive() and "error" not in result
        assert during, "scoring never overlapped the heat map"
        assert all(np.allclose(d, before, atol=1e-6) for d in during)
        out = result["path"]
        assert out == heatmap_path(tmp_path / "state", sha) and out.is_file()
        assert cv2.imread(str(out)).shape == (200, 120, 3)
        (row,) = store.query_verdicts()
        assert row["heatmap_path"] == str(out)


def test_heatmap_queue_is_bounded_in_order_and_survives_a_bad_image(detector, tmp_path, caplog):
    shas = [f"{i:02x}" * 32 for i in range(4)]
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        for i, sha in enumerate(shas):
            record_verdict(store, f"/cap/{i}.tif", sha, 10, 1, detector.sha256, 0.9, "abnormal", None, 0.5,
                                 "global", 0.1, 0.1)
        owed = HeatmapQueue(store, tmp_path / "state", maxsize=3)
        assert not owed.run_one() and len(owed) == 0  # nothing owed: nothing drawn
        assert owed.submit(detector, sample_image16(200, 120, seed=1), shas[0])
        assert owed.submit(detector, np.zeros((4, 4, 2), np.uint16), shas[1])  # fails when drawn
        assert owed.submit(detector, sample_image16(200, 120, seed=2), shas[2])
        assert not owed.submit(detector, sample_image16(200, 120, seed=3), shas[3])  # full: dropped, logged
        assert "heat map queue full" in caplog.text and len(owed) == 3
        assert owed.run_one() and owed.done == 1 and heatmap_path(tmp_path / "state", shas[0]).is_file()
        assert owed.run_one() and owed.failed == 1  # a bad image is logged, never raised
        assert owed.drain(30.0) == 0 and owed.done == 2 and len(owed) == 0
        with_maps = {row["sha256"] for row in store.query_verdicts() if row["heatmap_path"]}
        assert with_maps == {shas[0], shas[2]}


def test_heatmap_queue_drain_stops_at_its_deadline(detector, tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        owed = HeatmapQueue(store, tmp_path / "state")
        for i in range(3):
            owed.submit(detector, sample_image16(200, 120, seed=i), f"{i:02x}" * 32)
        assert owed.drain(0.0) == 3 and owed.done == 0  # no time given: nothing drawn, all still owed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gradcam_on_cuda_matches_cpu(net):
    x = make_input(1)
    gpu_net = copy.deepcopy(net).cuda()
    cam_gpu = gradcam(gpu_net, x.cuda())
    np.testing.assert_allclose(cam_gpu, gradcam(net, x), atol=1e-3)
    assert all(not p.requires_grad for p in gpu_net.backbone.parameters())
