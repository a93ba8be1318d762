"""Read a 16-bit grayscale DICOM image: the header read with a bound and checked before the pixel data is
read, the decoder chosen from the installed pydicom plugins, GDCM run in a child process."""

from __future__ import annotations

import io
import math
import signal
import subprocess
import sys
import warnings
from typing import BinaryIO

import numpy as np

from inspector.base.errors import ImageError
from inspector.imaging.imagecheck import DECODE_ERRORS, check_size, decode_error

# pydicom decodes each compressed transfer syntax with plugins (pydicom.pixels.get_decoder(uid)
# .available_plugins: those whose packages are installed). inspector tries the available ones of these, in
# this order, in its own process; only where none of them is available does it run the others (GDCM: the
# one permissive JPEG Lossless decoder) in a child process, because GDCM aborts or crashes the whole process
# (SIGABRT, SIGSEGV) on some damaged JPEG Lossless, JPEG-LS and JPEG 2000 headers, where these raise an
# exception. "pydicom" is pydicom's own RLE Lossless decoder.
DICOM_IN_PROCESS_PLUGINS = ("pydicom", "pyjpegls", "pillow", "pylibjpeg")
# pip packages of the plugins inspector depends on (pyproject.toml), for the operator's advice.
DICOM_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pyjpegls": "pyjpegls", "pillow": "pillow"}
# A file the child decoder takes longer than this on is refused, not waited for.
CHILD_DECODE_SECONDS = 120.0
_EXPORT_ADVICE = "uncompressed (Explicit VR Little Endian), JPEG-LS, JPEG 2000 or JPEG Lossless"
_PYDICOM_PREAMBLE = "Unable to decode as exceptions were raised by all available plugins:"
_CHILD_DECODER = r"""
import io, os, sys
sys.path[:] = sys.argv[2:]
result = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # the C libraries print to stdout: only this program may write the result there
try:
    import numpy as np, pydicom
    from pydicom.pixels import pixel_array
except Exception as exc:
    result.write(("BROKEN %s: %s" % (type(exc).__name__, exc)).encode())
    sys.exit(0)
ds = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read()))
failures = []
for plugin in sys.argv[1].split(","):
    try:
        pixels = np.ascontiguousarray(pixel_array(ds, decoding_plugin=plugin))
    except Exception as exc:
        text = " ".join(str(exc).split())
        failures.append("GDCM could not decode the data" if "'NoneType' object has no attribute 'encode'" in text
                        else text or type(exc).__name__)
        continue
    result.write(("OK %s %s\n" % (pixels.dtype.str, " ".join(map(str, pixels.shape)))).encode())
    result.write(pixels.tobytes())
    sys.exit(0)
result.write(("FAILED " + "\n".join(failures)).encode())
"""


def read_dicom(fh: BinaryIO, size: int, max_height: int, max_width: int) -> np.ndarray:
    from pydicom.errors import InvalidDicomError

    try:
        header = _DicomHeader(fh)
        _check_dicom_header(header.dataset(), max_height, max_width)
        header.check_pixel_data(size)
        fh.seek(0)
        data = fh.read()  # bounded now: the header and the pixel data's extent have been checked
        ds = _dcmread(data)
        if "PixelData" not in ds:
            raise ImageError("not_an_image", "the DICOM file holds no pixel data (it is not an image)")
        in_process, in_child = _dicom_decoders(ds)
        if in_process or in_child:
            _check_dicom_stream_end(ds)
        pixels = _decode_dicom(ds, data, in_process, in_child)
    except ImageError:
        raise
    except MemoryError:
        raise
    except (InvalidDicomError, *DECODE_ERRORS) as exc:
        raise decode_error("DICOM", exc) from None
    if pixels.ndim != 2:
        raise ImageError("multi_page", f"the DICOM pixel data has shape {pixels.shape}, not one 2-D image")
    return _rescale_dicom(ds, pixels)


# The header (everything before the pixel data) is read with a bound: a file of zeros or of endless tiny
# elements after `DICM` once kept pydicom busy for minutes and took gigabytes (issue 25, case 5).
DICOM_HEADER_BYTES = 64 << 20  # at most this much is read, or skipped (larger values are not read), before it
DICOM_HEADER_ELEMENTS = 100_000  # top-level elements before the pixel data (a scanner export has a few hundred)
DICOM_DEFER_BYTES = 1 << 20  # a header value larger than this is skipped, not read
_PIXEL_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)  # Pixel Data, Double and Float Pixel Data


class _DicomHeader:
    """The header of a DICOM file read from the file itself, never more than DICOM_HEADER_BYTES of it, up to
    its pixel data, whose declared length and position are kept to be checked against the file size."""

    name = "image.dcm"  # pydicom names the file in its warnings (a descriptor's number made it raise)

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.read_bytes = self.reads = self.elements = 0
        self.pixel_at: int | None = None  # where the pixel data's value starts
        self.pixel_length = 0
        self.ds = None

    def read(self, n: int = -1) -> bytes:
        self.reads += 1  # pydicom reads each element's tag and length, then its value
        if self.reads > 3 * DICOM_HEADER_ELEMENTS:
            raise ImageError("corrupt", f"the DICOM header holds more than {DICOM_HEADER_ELEMENTS} data elements "
                             "before its pixel data: the file is damaged; export it again")
        self.read_bytes += n if n >= 0 else DICOM_HEADER_BYTES
        if self.read_bytes > DICOM_HEADER_BYTES:
            raise ImageError("too_large", f"the DICOM header runs on for more than {DICOM_HEADER_BYTES >> 20} MiB "
                             "before its pixel data (a scanner's export has a few kilobytes): the file is not an "
                             "image export inspector can read; export it again")
        return self.fh.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def _stop(self, tag: int, vr: str | None, length: int) -> bool:
        """pydicom's stop_when, called per element: stop at the pixel data; refuse zeros and endless headers."""
        if tag in _PIXEL_TAGS:
            self.pixel_at, self.pixel_length = self.fh.tell(), length
            return True
        if tag == 0 and not length:
            raise ImageError("truncated", f"the DICOM file holds zero bytes at byte {self.fh.tell() - 8} where its "
                             "data elements belong: a writer has reserved the space but not written it yet")
        self.elements += 1
        if self.elements > DICOM_HEADER_ELEMENTS:
            raise ImageError("corrupt", f"the DICOM header holds more than {DICOM_HEADER_ELEMENTS} data elements "
                             "before its pixel data: the file is damaged; export it again")
        return False

    def _check_written(self) -> None:
        """Zero bytes after `DICM` or after the file meta group are space a writer reserved and has not filled
        yet (pydicom would read them as endless empty elements): `truncated`, judged again when it changes."""
        self.fh.seek(128)
        head = self.fh.read(16)
        if head[:4] != b"DICM":
            return
        at = 132
        if head[4:12] == b"\x02\x00\x00\x00UL\x04\x00":  # (0002,0000) File Meta Information Group Length
            at = 144 + int.from_bytes(head[12:16], "little")
        self.fh.seek(at)
        if not self.fh.read(8).strip(b"\0"):
            raise ImageError("truncated", f"the DICOM file ends, or holds zero bytes, at byte {at} where its data "
                             "elements belong: a writer has not written them yet")

    def dataset(self):
        """The header's dataset (up to the pixel data); `truncated` where the file ends inside an element."""
        from pydicom.filereader import read_partial

        self._check_written()
        self.fh.seek(0)
        self.ds = _warned_truncated(lambda: read_partial(self, stop_when=self._stop, defer_size=DICOM_DEFER_BYTES))
        return self.ds

    def check_pixel_data(self, size: int) -> None:
        """The declared pixel data must lie in the file, and the file be no larger than the image can need:
        checked before the file is read whole."""
        if self.pixel_at is None:
            raise ImageError("not_an_image", "the DICOM file holds no pixel data (it is not an image)")
        if self.pixel_at > DICOM_HEADER_BYTES:
            raise ImageError("too_large", f"the DICOM header takes {self.pixel_at} bytes before its pixel data, more "
                             f"than the {DICOM_HEADER_BYTES >> 20} MiB inspector reads: export the image alone")
        if self.pixel_length != 0xFFFFFFFF and self.pixel_at + self.pixel_length > size:
            raise ImageError("truncated", f"the DICOM declares {self.pixel_length} bytes of pixel data from byte "
                             f"{self.pixel_at}, but the file has {size} bytes: the file is truncated (was it still "
                             "being written?)")
        needed = int(self.ds.Rows) * int(self.ds.Columns) * 2
        if size > self.pixel_at + 2 * needed + (16 << 20):
            raise ImageError("too_large", f"the DICOM file has {size} bytes, far more than its {self.ds.Columns} x "
                             f"{self.ds.Rows} image needs: it is not a single image export; export it again")


def _dcmread(data: bytes):
    """The whole dataset of a file in memory; one that ends inside an element is `truncated`."""
    import pydicom

    return _warned_truncated(lambda: pydicom.dcmread(io.BytesIO(data)))


def _warned_truncated(read):
    """read(); pydicom warns (and reads on) where the file ends inside an element: that is `truncated`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read()
    for warning in caught:
        text = str(warning.message)
        if text.startswith("End of file reached"):
            raise ImageError("truncated", f"the DICOM file ends inside its data ({text.split(' in file ')[0]}): "
                             "the file is truncated (was it still being written?)")
    return ds


def _dicom_decoders(ds) -> tuple[list[str], list[str]]:
    """The pydicom plugins to decode this file with (in process, in a child), asked of pydicom before decoding.

    A valid encoding that no installed plugin decodes is `unsupported_encoding`, naming the transfer syntax:
    the file may well be fine, and re-exporting the same scan would not help. Uncompressed data needs none.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, JPEGExtended12Bit

    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if value is None:
        return [], []  # pydicom guesses an uncompressed syntax from the data, or refuses the file
    uid = UID(str(value))
    if not uid.is_valid:
        raise ImageError("corrupt", f"the DICOM transfer syntax {str(uid)!r} is not a valid UID: the header is "
                         "damaged; export it again")
    if uid.type not in ("", "Transfer Syntax"):
        raise ImageError("corrupt", f"the DICOM names {uid} ({uid.name}, a {uid.type} UID) as its transfer "
                         "syntax: the header is damaged; export it again")
    if not uid.type:
        raise ImageError("unsupported_encoding", f"the DICOM pixel data is encoded in transfer syntax {uid}, a "
                         "private or newer syntax the installed pydicom does not know: the file may well be fine; "
                         f"have the scanner export it {_EXPORT_ADVICE}")
    named = f"{uid.name} (transfer syntax {uid})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageError("unsupported_encoding", f"the DICOM pixel data is encoded as {named}, which pydicom has "
                         f"no decoder for: the file may well be fine; have the scanner export it {_EXPORT_ADVICE}"
                         ) from None
    if not decoder.is_encapsulated:
        return [], []
    plugins = list(decoder.available_plugins)
    bits = int(ds.get("BitsStored", 8))
    if uid == JPEGExtended12Bit and bits > 8:
        plugins = [p for p in plugins if p not in ("gdcm", "pillow")]  # pydicom: both read 8-bit samples only
        if not plugins:
            raise ImageError("unsupported_encoding", f"the DICOM pixel data is encoded as {named} with {bits}-bit "
                             "samples, which no installed decoder reads (pydicom's only one, pylibjpeg-libjpeg, is "
                             "GPL-licensed and not part of inspector): the file may well be fine; have the scanner "
                             f"export it {_EXPORT_ADVICE}")
    if not plugins:
        missing = {m.split(" - ")[0]: m for m in decoder.missing_dependencies}  # "label - requires ..."
        ours = [DICOM_PLUGIN_PACKAGES[p] for p in (*DICOM_IN_PROCESS_PLUGINS, *DICOM_PLUGIN_PACKAGES)
                if p in missing and p in DICOM_PLUGIN_PACKAGES]
        if ours:
            todo = (f"install {' or '.join(dict.fromkeys(ours))} into inspector's Python environment (inspector "
                    "depends on them: `pip install -e .` installs them)")
        else:
            todo = f"install a decoder pydicom can use for it ({'; '.join(missing.values())})"
        raise ImageError("unsupported_encoding", f"the DICOM pixel data is encoded as {named} and no decoder for "
                         f"it is installed: the file may well be fine; {todo}, or have the scanner export it "
                         f"{_EXPORT_ADVICE}")
    in_process = [p for p in DICOM_IN_PROCESS_PLUGINS if p in plugins]
    return (in_process, []) if in_process else ([], plugins)


def _check_dicom_stream_end(ds) -> None:
    """A JPEG, JPEG-LS or JPEG 2000 codestream ends with its end marker (FF D9, then at most padding: 0x00 as
    DICOM pads, 0xFF as some devices do, both legal).

    One without it was cut short, typically a file still being written: decoders would fill it out with
    made-up pixels, or (CharLS, for JPEG-LS) spend seconds failing on it. RLE has no end marker.
    """
    from pydicom import uid as uids
    from pydicom.encaps import generate_frames

    syntax = ds.file_meta.TransferSyntaxUID
    if syntax not in (*uids.JPEGTransferSyntaxes, *uids.JPEGLSTransferSyntaxes, *uids.JPEG2000TransferSyntaxes):
        return
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    if not frame.rstrip(b"\0\xff").endswith(b"\xff\xd9"):  # 0x00 or 0xFF padding after the marker is legal
        raise ImageError("truncated", f"the DICOM's {syntax.name} data ({len(frame)} bytes) ends without its "
                         "end-of-image marker: the file is truncated (was it still being written?)")


def _decode_dicom(ds, data: bytes, in_process: list[str], in_child: list[str]) -> np.ndarray:
    """Decode with each plugin in turn, as pydicom would, but never let a decoder crash take the process."""
    from pydicom.pixels import pixel_array

    if not in_process and not in_child:
        return ds.pixel_array
    failures = []
    for plugin in in_process:
        try:
            return pixel_array(ds, decoding_plugin=plugin)
        except MemoryError:
            raise
        except Exception as exc:  # the plugin's own words, whatever it raises
            failures.append(_plugin_failure(exc))
    if in_child:
        pixels, failure = _decode_in_child(data, in_child)
        if pixels is not None:
            return pixels
        failures.append(failure)
    raise decode_error("DICOM", RuntimeError("; ".join(failures)))


def _plugin_failure(exc: BaseException | str) -> str:
    """One plugin's complaint on one line, without pydicom's preamble and cut to a readable length."""
    text = " ".join(str(exc).replace(_PYDICOM_PREAMBLE, "").split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _decode_in_child(data: bytes, plugins: list[str]) -> tuple[np.ndarray | None, str]:
    """Run pydicom's `plugins` on the file in a child Python: (pixels, "") or (None, what went wrong).

    A decoder that crashes, hangs or fails there costs this one file (`corrupt`), never the process.
    """
    names = ", ".join(plugins)
    command = [sys.executable, "-I", "-c", _CHILD_DECODER, ",".join(plugins), *[p for p in sys.path if p]]
    try:
        proc = subprocess.run(command, input=data, capture_output=True, timeout=CHILD_DECODE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ImageError("corrupt", f"the {names} decoder took more than {CHILD_DECODE_SECONDS:g} s on the DICOM "
                         "pixel data and was stopped: the file is probably damaged; export it again") from None
    except OSError as exc:
        raise ImageError("unsupported_encoding", f"the {names} decoder process cannot be started ({exc}): the "
                         "file may well be fine; it is the station that cannot decode it now") from None
    if proc.returncode < 0:
        try:
            what = signal.Signals(-proc.returncode).name
        except ValueError:
            what = f"signal {-proc.returncode}"
        return None, f"the {names} decoder crashed ({what}) on the compressed data"
    status, _, rest = proc.stdout.partition(b" ")
    if status == b"BROKEN":
        raise ImageError("unsupported_encoding", f"the {names} decoder cannot be loaded "
                         f"({rest.decode('utf-8', 'replace')}): the file may well be fine; repair inspector's "
                         "Python environment (`pip install -e .`)")
    if status == b"FAILED":
        return None, "; ".join(_plugin_failure(line) for line in rest.decode("utf-8", "replace").splitlines())
    head, _, payload = rest.partition(b"\n")
    fields = head.decode("ascii", "replace").split()
    if status != b"OK" or not fields:
        last = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        return None, f"the {names} decoder process failed (exit status {proc.returncode}: {last})"
    dtype, shape = np.dtype(fields[0]), tuple(int(n) for n in fields[1:])
    if dtype.kind not in "ui" or len(payload) != dtype.itemsize * math.prod(shape):
        return None, f"the {names} decoder returned {len(payload)} bytes of {dtype} for shape {shape}"
    return np.frombuffer(payload, dtype).reshape(shape), ""


def _check_dicom_header(ds, max_height: int, max_width: int) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError("multi_page", f"the DICOM holds {frames} frames; inspector scores one image per file")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageError("not_an_image", "the DICOM file has no Rows/Columns: it holds no image")
    check_size(int(ds.Rows), int(ds.Columns), max_height, max_width)
    samples, photometric = int(ds.get("SamplesPerPixel", 1)), str(ds.get("PhotometricInterpretation", ""))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError("not_grayscale", f"the DICOM is {photometric or 'unknown'} with {samples} samples per "
                         "pixel; inspector needs MONOCHROME1 or MONOCHROME2")
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", ds.get("BitsAllocated", 0)))
    if allocated != 16 or not 9 <= stored <= 16:
        raise ImageError("wrong_dtype", f"the DICOM stores {stored} of {allocated} bits per pixel; inspector needs "
                         "16-bit pixels with 9 to 16 bits used")


def _dicom_number(ds, keyword: str, default: float) -> float:
    """One numeric header value; text, several values or a missing value where one is needed is corrupt."""
    try:
        value = ds.get(keyword, default)  # pydicom converts DS/IS text on access, and may raise there
        if value is None or value == "":
            return default
        return float(value)
    except (TypeError, ValueError):
        raise ImageError("corrupt", f"the DICOM {keyword} is {str(value)!r}, not one number; the scanner's "
                         "export is damaged: export it again") from None


def _rescale_dicom(ds, pixels: np.ndarray) -> np.ndarray:
    """Apply Rescale Slope/Intercept; invert MONOCHROME1 so that higher always means brighter."""
    slope, intercept = _dicom_number(ds, "RescaleSlope", 1), _dicom_number(ds, "RescaleIntercept", 0)
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise ImageError("corrupt", f"the DICOM Rescale Slope {slope} / Intercept {intercept} are not usable")
    stored = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored_lo, stored_hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    values = pixels.astype(np.float64) * slope + intercept
    if ds.PhotometricInterpretation == "MONOCHROME1":
        lo, hi = sorted((stored_lo * slope + intercept, stored_hi * slope + intercept))
        values = (lo + hi) - values  # maps the representable range onto itself, reversed
    values = np.floor(values + 0.5)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 65535:
        raise ImageError("wrong_dtype", f"after Rescale Slope {slope:g} and Intercept {intercept:g} the pixel values "
                         f"span {low:g} to {high:g}, outside the 0-65535 a 16-bit image can hold")
    return np.clip(values, 0, 65535).astype(np.uint16)
