"""The bounded decoders, in-process: every page a frame, every refusal before allocation.

Memory is measured with tracemalloc (NumPy and zlib allocations are traced): a file that
declares gigabytes, or inflates to 128 MiB, must be refused having allocated about
nothing, which is what "checked before decoded" means.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import tifffile
from serving_helpers import small_package_params
from serving_payloads import (
    counts_tubelet,
    display8_tubelet,
    hostile_payloads,
    npy_bytes,
    npy_declaring,
    tiff_bytes,
    tiff_pages,
    zlib_tiff_bomb,
)

from thermops.serve.decoders import check_shape, parse_json_tubelet, parse_npy, parse_upload, walk_tiff
from thermops.serve.errors import PayloadTooLarge, TubeletError, UnsupportedMedia

LIMITS = small_package_params()
A = counts_tubelet(8, 40, 30, seed=3)


def _peak(fn) -> tuple[object, int]:
    """(result or exception, peak bytes traced while running fn)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        out = fn()
    except Exception as err:  # noqa: BLE001  (the caller asserts on it)
        out = err
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak


# ------------------------------------------------------------------ good files, every layout


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(npy_bytes(A), id="npy"),
        pytest.param(npy_bytes(np.asfortranarray(A)), id="npy-fortran"),
        pytest.param(npy_bytes(A.astype(">u2")), id="npy-big-endian"),
        pytest.param(tiff_bytes(A), id="tiff-one-series"),
        pytest.param(tiff_pages(A), id="tiff-page-loop"),
        pytest.param(tiff_pages(A, compression="zlib"), id="tiff-page-loop-zlib"),
        pytest.param(tiff_bytes(A, compression="zlib", tile=(16, 16)), id="tiff-tiled-zlib"),
        pytest.param(tiff_bytes(A, compression="zlib", predictor=True), id="tiff-zlib-predictor"),
        pytest.param(tiff_bytes(A, bigtiff=True), id="bigtiff"),
        pytest.param(tiff_bytes(A, imagej=True), id="tiff-imagej"),
        pytest.param(tiff_bytes(A, rowsperstrip=7), id="tiff-many-strips"),
    ],
)
def test_every_layout_decodes_to_every_frame(data):
    got = parse_upload(data, LIMITS)
    assert got.shape == A.shape and np.array_equal(got, A)


def test_a_page_loop_tiff_is_every_page_not_the_first_series():
    """The issue's silent wrong answer: tifffile's asarray() gives the first series only."""
    data = tiff_pages(A)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.asarray().shape == A.shape[1:]  # what the old service classified
    assert parse_upload(data, LIMITS).shape == A.shape


def test_npy_is_a_view_on_the_upload_not_a_copy():
    data = npy_bytes(A)
    arr = parse_npy(data, LIMITS)
    assert not arr.flags.owndata and np.array_equal(arr, A)


@pytest.mark.parametrize("dtype", ["u1", "u2", "i2", "i4", "f4", "f8"])
def test_tiff_bit_depths(dtype):
    arr = (A % 200).astype(dtype)
    assert np.array_equal(parse_upload(tiff_pages(arr), LIMITS), arr)


def test_json_tubelet_shape_checked_before_conversion():
    ok = parse_json_tubelet(display8_tubelet(2, 8, 9).tolist(), LIMITS)
    assert ok.shape == (2, 8, 9) and ok.dtype == np.float64
    with pytest.raises(PayloadTooLarge, match="frames"):
        parse_json_tubelet([[[0.0] * 8] * 8] * (LIMITS.max_frames + 1), LIMITS)
    with pytest.raises(TubeletError, match="regular"):
        parse_json_tubelet([[[0.0] * 8] * 8, [[0.0] * 7] * 8], LIMITS)


@pytest.mark.parametrize(
    "shape, error, fragment",
    [
        ((4, 8), TubeletError, "(T, H, W)"),
        ((0, 8, 8), TubeletError, "no frames"),
        ((2, 7, 8), TubeletError, "at least 8 x 8"),
        ((LIMITS.max_frames + 1, 8, 8), PayloadTooLarge, "frames"),
        ((1, 8, LIMITS.max_side + 1), PayloadTooLarge, "per side"),
        ((32, 100, 100), PayloadTooLarge, "values"),
    ],
)
def test_check_shape(shape, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        check_shape(shape, LIMITS)


# ------------------------------------------------------------------ hostile files


# The hostile files a decoder refuses (the others are refused by the gateway or the camera check).
DECODER_CASES = [p for p in hostile_payloads(LIMITS) if p.name.startswith(("npy-", "tiff-", "png", "empty-file"))]


def _file_part(body: bytes) -> bytes:
    _, _, rest = body.partition(b"\r\n\r\n")
    return rest[: rest.index(b"\r\n--thermopsboundary7e3f")]


def test_the_decoder_cases_cover_the_issue_findings():
    names = {p.name for p in DECODER_CASES}
    assert {
        "npy-declares-32GiB",
        "tiff-zlib-bomb-128MiB",
        "tiff-mixed-sizes",
        "tiff-rgb-planar",
        "tiff-truncated",
    } <= names


@pytest.mark.parametrize("payload", DECODER_CASES, ids=lambda p: p.name)
def test_hostile_upload_refused_in_process(payload):
    """Each hostile file raises the error of its status, whose message says what is wrong."""
    from thermops.serve.requests import check_tubelet

    with pytest.raises((TubeletError, UnsupportedMedia)) as info:
        check_tubelet(parse_upload(_file_part(payload.body), LIMITS), LIMITS)
    assert info.value.status == payload.statuses[0], str(info.value)
    assert payload.fragment in str(info.value)


@pytest.mark.parametrize(
    "name, data",
    [
        ("npy declaring 32 GiB", npy_declaring((4096, 4096, 256))),
        ("npy declaring 8 GiB", npy_declaring((2048, 2048, 256))),
        ("npy over max_elements", npy_declaring((32, 128, 128))),
        ("zlib TIFF inflating to 128 MiB", zlib_tiff_bomb(64, 128 << 20)),
        ("zlib TIFF inflating to 512 MiB", zlib_tiff_bomb(128, 512 << 20)),
    ],
)
def test_bombs_are_refused_before_any_allocation(name, data):
    out, peak = _peak(lambda: parse_upload(data, LIMITS))
    assert isinstance(out, (PayloadTooLarge, TubeletError)), out
    # One declared segment at most (64 x 64 x 2 = 8 KiB; 128 x 128 x 2 = 32 KiB), plus bookkeeping.
    assert peak < 1 << 20, f"{name}: {peak} bytes allocated before the refusal"


def test_a_good_file_allocates_about_its_size():
    data = tiff_pages(A, compression="zlib")
    out, peak = _peak(lambda: parse_upload(data, LIMITS))
    assert isinstance(out, np.ndarray)
    assert peak < 8 * A.nbytes + (1 << 20), peak


def test_tiff_walk_counts_pages_without_decoding():
    pages = walk_tiff(tiff_pages(A, compression="zlib"), LIMITS)
    assert [p.index for p in pages] == list(range(8))
    assert all((p.height, p.width, p.dtype, p.compression) == (40, 30, np.dtype("u2"), 8) for p in pages)


@pytest.mark.parametrize("layout", ["contig", "separate"])
def test_rgb_tiff_is_not_taken_as_frames(layout):
    rgb = np.zeros((16, 16, 3), np.uint8) if layout == "contig" else np.zeros((3, 16, 16), np.uint8)
    data = tiff_bytes(rgb, photometric="rgb", planarconfig=layout)
    with pytest.raises(TubeletError, match="3 samples per pixel"):
        parse_upload(data, LIMITS)


def test_a_tiff_tag_with_a_huge_count_is_refused_unread():
    """A StripOffsets tag claiming 10^6 values is refused from its count alone."""
    import struct

    src = bytearray(tiff_bytes(A[0]))
    with tifffile.TiffFile(io.BytesIO(bytes(src))) as tif:
        tag = tif.pages[0].tags["StripByteCounts"]
    # the entry is 12 bytes before the value field: code, type, count, value
    struct.pack_into("<I", src, tag.offset + 4, 1_000_000)
    with pytest.raises(TubeletError, match="declares 1000000 values"):
        parse_upload(bytes(src), LIMITS)
