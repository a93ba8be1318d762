"""Files still being filled in (issue 12, case 3c): a writer that sets the full size first and fills it later
(common on SMB) left image data that was zero bytes; it was scored. Such a file reads `truncated` (which the
daemon treats as provisional), while a complete image with a few black rows is still read."""

from __future__ import annotations

import numpy as np
import pytest

from image_files import sample_image16, write_tiff16
from inspector.base.errors import ImageError
from inspector.imaging.read import read_image


def preallocated(path, data: bytes, filled: int) -> None:
    """The file at its full size, only its first `filled` bytes written (the rest as the OS reserved it: zeros)."""
    with open(path, "wb") as fh:
        fh.truncate(len(data))
        fh.write(data[:filled])


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 0.97])
def test_a_tiff_filled_in_part_is_truncated_not_scored(tmp_path, compression, fraction):
    source = write_tiff16(tmp_path / "source.tif", sample_image16(200, 120, seed=1), compression=compression,
                          rowsperstrip=50 if compression else None)
    data = source.read_bytes()
    scan = tmp_path / "scan.tif"
    preallocated(scan, data, int(len(data) * fraction))
    with pytest.raises(ImageError) as err:
        read_image(scan)
    assert err.value.reason == "truncated", err.value
    if fraction == 0.0:
        assert "zero bytes where its header belongs" in err.value.message
    else:
        assert "image data ends in" in err.value.message and "still being filled in" in err.value.message
    preallocated(scan, data, len(data))  # the writer finishes: the same file reads
    assert np.array_equal(read_image(scan), sample_image16(200, 120, seed=1))


def test_a_complete_image_with_a_few_black_rows_at_the_bottom_is_read(tmp_path):
    img = sample_image16(200, 120, seed=2)
    img[-2:] = 0  # 480 bytes of zeros: under the 512 that count as unwritten space
    assert np.array_equal(read_image(write_tiff16(tmp_path / "dark.tif", img)), img)
    img[-1, -1] = 7
    img[-100:-1] = 0  # a large black region that does not reach the end of the data
    assert np.array_equal(read_image(write_tiff16(tmp_path / "band.tif", img)), img)
