"""Bad-input fuzzing: mutated real TIFFs end as a uint16 image or an ImageError with a known reason;
never another exception, never a hang, never a large allocation."""

from __future__ import annotations

import signal
import time
import tracemalloc

import pytest

from soak import scaled
from inspector.base.errors import IMAGE_REASONS, ImageError
from inspector.imaging.read import read_image
from tiff_mutation import VARIANTS, build_case, is_uint16_image, plan_case, write_base

CASES = scaled(300, 100_000)
CASE_SECONDS = 2.0
# The base files are ~5 KB; no read may allocate more than this (the config limit allows 10000 x 10000).
PEAK_BYTES = 64 * 1024 * 1024
# Known crashes of imaging.read_image, kept as strict xfail reproducers until imaging.py is fixed
# (then they XPASS and fail: delete them here). All four: a zero TileLength/TileWidth makes
# _check_tiff_segments divide by zero (ZeroDivisionError instead of ImageError "corrupt").
# Cases that once crashed read_image (ZeroDivisionError on a zero tile size); kept as regressions.
FOUND_CRASHES: dict[int, str] = {
    5022: "variant=zlib_tiled mutation=flip_header: header: byte 154 ^= 0x5e (TileWidth -> 0)",
    6928: "variant=zlib_tiled mutation=flip_anywhere: bytes 4890, 155, 4232, 3589, 3342, 5165 flipped",
    9918: "variant=zlib_tiled mutation=flip_header: header: byte 154 ^= 0xf8",
    10547: "variant=zlib_tiled mutation=flip_header: header: byte 118 ^= 0xee, byte 155 ^= 0xeb",
}


class CaseTimeout(Exception):
    """One read took longer than CASE_SECONDS."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-bases")
    return {name: write_base(folder, name) for name in VARIANTS}


def read_case(path, data: bytes) -> tuple[object, float, int]:
    """Write and read one case under a CPU-time alarm; returns (array or ImageError, seconds, peak bytes)."""
    path.write_bytes(data)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_PROF, CASE_SECONDS * 2)
    try:
        result: object = read_image(path)
    except ImageError as exc:
        result = exc
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    seconds = time.perf_counter() - start
    return result, seconds, tracemalloc.get_traced_memory()[1] - before


@pytest.mark.timeout(3000 if CASES > 1000 else 120)
def test_mutated_tiffs_end_as_image_or_known_rejection(tmp_path, bases):
    # SIGPROF (CPU time) for a spinning read; pytest-timeout keeps SIGALRM for a blocked one.
    previous = signal.signal(signal.SIGPROF, _on_alarm)
    tracemalloc.start()
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    try:
        for seed in range(CASES):
            data, what = build_case(bases, seed)
            try:
                result, seconds, peak = read_case(tmp_path / "case.tif", data)
            except CaseTimeout:
                failures.append(f"HANG (> {2 * CASE_SECONDS} s of CPU): {what}")
                continue
            except Exception as exc:  # noqa: BLE001 - any other exception is the defect we look for
                failures.append(f"CRASH {type(exc).__name__}: {exc}: {what}")
                continue
            if isinstance(result, ImageError):
                if result.reason not in IMAGE_REASONS:
                    failures.append(f"unknown reason {result.reason!r}: {what}")
                key = result.reason
            elif is_uint16_image(result):
                key = "image"
            else:
                failures.append(f"returned {type(result).__name__} {getattr(result, 'dtype', '')} "
                                f"{getattr(result, 'shape', '')}: {what}")
                continue
            if seconds > CASE_SECONDS:
                failures.append(f"SLOW {seconds:.2f} s: {what}")
            if peak > PEAK_BYTES:
                failures.append(f"ALLOCATED {peak / 2**20:.0f} MiB: {what}")
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGPROF, previous)
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:40])
    # The mutations must actually reach the rejection paths, not just produce readable files.
    assert sum(outcomes.values()) == CASES
    assert outcomes.get("truncated", 0) > 0 and outcomes.get("corrupt", 0) > 0, outcomes


@pytest.mark.parametrize("seed", sorted(FOUND_CRASHES))
def test_former_crashes_are_rejected_as_corrupt(tmp_path, bases, seed):
    data, what = build_case(bases, seed)
    assert what.split(" ", 1)[1].startswith(FOUND_CRASHES[seed].split(":")[0])
    (tmp_path / "case.tif").write_bytes(data)
    with pytest.raises(ImageError) as info:
        read_image(tmp_path / "case.tif")
    assert info.value.reason == "corrupt"


def test_every_variant_and_mutation_is_planned():
    planned = {plan_case(seed) for seed in range(CASES)}
    assert {v for v, _ in planned} == set(VARIANTS)
    assert {m for _, m in planned} >= {"truncate", "flip_header", "lie_segments", "garbage_data", "flip_anywhere"}


def test_unmutated_bases_read_back_exactly(tmp_path, bases):
    from image_files import sample_image16

    for name, data in bases.items():
        (tmp_path / f"{name}.tif").write_bytes(data)
        assert (read_image(tmp_path / f"{name}.tif") == sample_image16(64, 40, seed=3)).all(), name


def test_allocation_bound_sees_what_a_read_allocates(tmp_path):
    """Control for PEAK_BYTES: tracemalloc does see the decoded pixels (numpy reports them)."""
    from image_files import sample_image16, write_tiff16

    big = write_tiff16(tmp_path / "big.tif", sample_image16(1024, 1024, seed=1), compression="zlib")
    tracemalloc.start()
    try:
        result, _, peak = read_case(tmp_path / "case.tif", big.read_bytes())
    finally:
        tracemalloc.stop()
    assert is_uint16_image(result) and peak >= 1024 * 1024 * 2
