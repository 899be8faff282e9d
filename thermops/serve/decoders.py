"""Bounded decoders: what a request declares is checked against the limits before anything
is decoded or allocated.

- `.npy`: the header (shape, dtype, byte order) is read and checked; the data must be
  exactly what it declares; the array is a view on the uploaded bytes (no copy, no
  reservation of a declared size).
- TIFF: the IFD chain is walked here (page count, entry counts, tag value sizes, page
  shapes, bit depths, sample layout, compression) before tifffile reads a tag; every
  deflate segment is decompressed under a cap of its declared size before tifffile
  decodes it; every page is a frame, whatever series tifffile would group it into.
- JSON: the nested lists' lengths are checked before they become an array.

Each refusal is a `TubeletError` (400), `PayloadTooLarge` (413) or `UnsupportedMedia`
(415) whose message says what is wrong. Shapes: a tubelet is (T, H, W).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from thermops.serve.errors import PayloadTooLarge, TubeletError, UnsupportedMedia

MIN_SIDE = 8  # smallest H, W the service accepts (the prepare step's min_window_px)
ACCEPTED_KINDS = ("u", "i", "f")  # numeric dtypes; bool, complex, object and strings are refused
NPY_MAGIC = b"\x93NUMPY"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class Limits(Protocol):
    """The size limits a decoder enforces (`PackageParams` has them)."""

    max_frames: int
    max_side: int
    max_elements: int


def check_shape(shape: Sequence[int], limits: Limits, field: str = "tubelet") -> tuple[int, int, int]:
    """Refuse a declared (T, H, W) shape that is malformed or over the limits; nothing is allocated."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise TubeletError(f"tubelet must have shape (T, H, W), got {len(shape)} dimension(s) {shape}", field=field)
    t, h, w = shape
    if t < 1:
        raise TubeletError("tubelet has no frames (T = 0)", field=field)
    if h < MIN_SIDE or w < MIN_SIDE:
        raise TubeletError(f"tubelet frames are {h} x {w} pixels; at least {MIN_SIDE} x {MIN_SIDE} needed", field=field)
    if t > limits.max_frames:
        raise PayloadTooLarge(f"tubelet has {t} frames; at most {limits.max_frames} accepted", field=field)
    if max(h, w) > limits.max_side:
        raise PayloadTooLarge(
            f"tubelet frames are {h} x {w} pixels; at most {limits.max_side} per side accepted", field=field
        )
    if t * h * w > limits.max_elements:
        raise PayloadTooLarge(f"tubelet has {t * h * w} values; at most {limits.max_elements} accepted", field=field)
    return t, h, w


def check_dtype(dtype: np.dtype, field: str = "tubelet") -> np.dtype:
    """Refuse non-numeric, structured and oversized dtypes."""
    if dtype.names is not None or dtype.subdtype is not None:
        raise TubeletError(f"tubelet dtype {dtype} is structured; send a plain numeric array", field=field)
    if dtype.kind not in ACCEPTED_KINDS or dtype.itemsize > 8:
        raise TubeletError(f"tubelet dtype {dtype} is not numeric; send integer or float values", field=field)
    return dtype


# --------------------------------------------------------------------------- .npy


def parse_npy(data: bytes, limits: Limits, field: str = "file") -> np.ndarray:
    """Decode an .npy file from its bytes: header checked first, data a view on `data`.

    Object arrays (pickles), structured dtypes and Fortran order are accepted only
    where harmless: pickles never, structured never, Fortran order yes (a view).
    """
    from numpy.lib import format as npformat

    if not data.startswith(NPY_MAGIC):
        raise TubeletError("upload is not an .npy file (missing the \\x93NUMPY magic)", field=field)
    fast = _npy_header_fast(data)
    if fast is not None:  # the header np.save writes: no literal_eval needed
        shape, fortran, dtype, offset = fast
        return _npy_array(data, shape, fortran, dtype, offset, limits, field)
    fp = io.BytesIO(data)
    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not accepted (1.0 or 2.0)")
    except (ValueError, SyntaxError, EOFError, OSError, struct.error, TypeError) as err:
        raise TubeletError(f"unreadable .npy header: {err}", field=field) from None
    return _npy_array(data, shape, fortran, dtype, fp.tell(), limits, field)


NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|][uif][1248])', 'fortran_order': (True|False), 'shape': \((\d+), (\d+), (\d+)\), \} *\n"
)


def _npy_header_fast(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """(shape, fortran, dtype, data offset) of a version-1.0 header in np.save's own layout, else None."""
    if data[6:8] != b"\x01\x00" or len(data) < 10:
        return None
    end = 10 + int.from_bytes(data[8:10], "little")
    m = NPY_HEADER.fullmatch(data, 10, end)
    if m is None:
        return None
    shape = (int(m[3]), int(m[4]), int(m[5]))
    return shape, m[2] == b"True", np.dtype(m[1].decode()), end


def _npy_array(
    data: bytes, shape: tuple, fortran: bool, dtype: np.dtype, offset: int, limits: Limits, field: str
) -> np.ndarray:
    if dtype.hasobject:
        raise TubeletError("unreadable .npy file: object arrays (pickles) are not accepted", field=field)
    check_dtype(dtype, field)
    t, h, w = check_shape(shape, limits, field)
    need = t * h * w * dtype.itemsize
    have = len(data) - offset
    if have < need:
        raise TubeletError(
            f"truncated or corrupt .npy file: header declares {shape} {dtype} ({need} bytes), the file holds {have}",
            field=field,
        )
    if have > need:
        raise TubeletError(f".npy file has {have - need} bytes after its array; send one array", field=field)
    arr = np.frombuffer(data, dtype=dtype, count=t * h * w, offset=offset)
    return arr.reshape((t, h, w), order="F" if fortran else "C")


# --------------------------------------------------------------------------- TIFF

# Tag numbers (TIFF 6.0, BigTIFF, SGI ImageDepth).
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION = 254, 256, 257, 258, 259
PHOTOMETRIC, STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 262, 273, 277, 278, 279
PLANAR_CONFIG, PREDICTOR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 317, 322, 323, 324, 325
SAMPLE_FORMAT, IMAGE_DEPTH = 339, 32997
WANTED = {
    NEW_SUBFILE_TYPE,
    IMAGE_WIDTH,
    IMAGE_LENGTH,
    BITS_PER_SAMPLE,
    COMPRESSION,
    PHOTOMETRIC,
    STRIP_OFFSETS,
    SAMPLES_PER_PIXEL,
    ROWS_PER_STRIP,
    STRIP_BYTE_COUNTS,
    PLANAR_CONFIG,
    PREDICTOR,
    TILE_WIDTH,
    TILE_LENGTH,
    TILE_OFFSETS,
    TILE_BYTE_COUNTS,
    SAMPLE_FORMAT,
    IMAGE_DEPTH,
}
# type code -> (struct format, size)
TIFF_TYPES = {
    1: ("B", 1),
    2: ("c", 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("II", 8),
    6: ("b", 1),
    7: ("c", 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("ii", 8),
    11: ("f", 4),
    12: ("d", 8),
    13: ("I", 4),
    16: ("Q", 8),
    17: ("q", 8),
    18: ("Q", 8),
}
BYTE_TYPES = (1, 2, 6, 7)  # become one bytes object, not a tuple of numbers
MAX_IFD_ENTRIES = 1024
DEFLATE_SLICE = 65536  # compressed bytes fed to zlib at a time
MAX_NUMERIC_VALUES = 65536  # per tag: more strips or tiles than a page within the limits can have
COMPRESSIONS = {1: "none", 8: "deflate", 32946: "deflate"}
COMPRESSION_NAMES = {
    2: "CCITT RLE",
    3: "CCITT G3",
    4: "CCITT G4",
    5: "LZW",
    6: "old JPEG",
    7: "JPEG",
    32773: "PackBits",
    34712: "JPEG 2000",
    50000: "Zstandard",
    50001: "WebP",
    34925: "LZMA",
}
PREDICTORS = {1: "none", 2: "horizontal", 3: "floating point"}
SAMPLE_KINDS = {1: "u", 2: "i", 3: "f"}
PHOTOMETRIC_NAMES = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr"}


@dataclass(frozen=True)
class TiffPageInfo:
    """One IFD as the walker read it: what decoding it would produce and where its data lie."""

    index: int
    height: int
    width: int
    dtype: np.dtype
    compression: int
    segment_bytes: int  # decoded bytes of one strip or tile
    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]


class _Reader:
    def __init__(self, data: bytes, field: str):
        self.data = data
        self.field = field
        bo = data[:2]
        if bo not in (b"II", b"MM"):
            raise TubeletError("not a TIFF file (byte order mark)", field=field)
        self.e = "<" if bo == b"II" else ">"
        magic = self.unpack("H", 2)[0]
        if magic == 42:
            self.big = False
            self.first = self.unpack("I", 4)[0]
        elif magic == 43:
            self.big = True
            size, zero = self.unpack("HH", 4)
            if (size, zero) != (8, 0):
                raise TubeletError("corrupt BigTIFF header", field=field)
            self.first = self.unpack("Q", 8)[0]
        else:
            raise TubeletError(f"not a TIFF file (magic {magic})", field=field)

    def unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(self.e + fmt)
        if offset < 0 or offset + size > len(self.data):
            raise TubeletError(
                f"truncated or corrupt TIFF file: a structure at byte {offset} runs past the end "
                f"({len(self.data)} bytes)",
                field=self.field,
            )
        return struct.unpack_from(self.e + fmt, self.data, offset)

    def ifd(self, offset: int, index: int) -> tuple[dict[int, tuple], int]:
        """Tag values of the IFD at `offset` (only the tags the checks need) and the next offset."""
        count_fmt, entry_size, value_size = ("Q", 20, 8) if self.big else ("H", 12, 4)
        n = self.unpack(count_fmt, offset)[0]
        if n > MAX_IFD_ENTRIES:
            raise TubeletError(
                f"TIFF page {index} declares {n} tags; at most {MAX_IFD_ENTRIES} accepted", field=self.field
            )
        start = offset + struct.calcsize(count_fmt)
        tags: dict[int, tuple] = {}
        for k in range(n):
            pos = start + k * entry_size
            code, typ = self.unpack("HH", pos)
            count = self.unpack("Q" if self.big else "I", pos + 4)[0]
            if typ not in TIFF_TYPES:
                continue  # unknown types are skipped by readers (TIFF 6.0); tifffile ignores them too
            fmt, size = TIFF_TYPES[typ]
            nbytes = count * size
            if typ not in BYTE_TYPES and count > MAX_NUMERIC_VALUES:
                raise TubeletError(
                    f"TIFF page {index}: tag {code} declares {count} values; at most {MAX_NUMERIC_VALUES} accepted",
                    field=self.field,
                )
            value_at = pos + 4 + (8 if self.big else 4)
            if nbytes > value_size:
                value_at = self.unpack("Q" if self.big else "I", value_at)[0]
                if value_at + nbytes > len(self.data):
                    raise TubeletError(
                        f"truncated or corrupt TIFF file: page {index}, tag {code} points past the end",
                        field=self.field,
                    )
            if code in WANTED and typ not in BYTE_TYPES:
                tags[code] = self.unpack(f"{count * len(fmt)}{fmt[0]}" if count else "0B", value_at)
            elif code in WANTED:
                tags[code] = tuple(self.data[value_at : value_at + nbytes])
        nxt = self.unpack("Q" if self.big else "I", start + n * entry_size)[0]
        return tags, nxt


def _one(tags: dict[int, tuple], code: int, default: int | None, index: int, name: str, field: str) -> int:
    values = tags.get(code)
    if not values:
        if default is None:
            raise TubeletError(f"TIFF page {index} has no {name} tag", field=field)
        return default
    if len(set(values)) != 1:
        raise TubeletError(f"TIFF page {index}: {name} differs between samples {values[:8]}", field=field)
    return int(values[0])


def walk_tiff(data: bytes, limits: Limits, field: str = "file") -> list[TiffPageInfo]:
    """Every page of a TIFF, checked against the limits and the accepted layouts; nothing decoded.

    Every IFD of the main chain is a frame. Refused: more than `max_frames` pages, pages
    of different sizes or bit depths, several samples per pixel (RGB, contiguous or
    planar), palette / inverted / volumetric pages, sub-byte or > 64-bit samples,
    compressions other than none and deflate (415).
    """
    r = _Reader(data, field)
    pages: list[TiffPageInfo] = []
    seen: set[int] = set()
    offset = r.first
    while offset:
        index = len(pages)
        if offset in seen:
            raise TubeletError(f"corrupt TIFF file: page {index} loops back to an earlier page", field=field)
        if index >= limits.max_frames:
            raise PayloadTooLarge(
                f"TIFF has more than {limits.max_frames} pages; at most {limits.max_frames} accepted", field=field
            )
        seen.add(offset)
        tags, offset = r.ifd(offset, index)
        pages.append(_page_info(tags, index, limits, field))
    if not pages:
        raise TubeletError("TIFF file has no pages", field=field)
    first = pages[0]
    for p in pages[1:]:
        if (p.height, p.width) != (first.height, first.width):
            raise TubeletError(
                f"TIFF page {p.index} is {p.height} x {p.width} pixels but page 0 is {first.height} x {first.width}; "
                "every page must be one frame of the same size",
                field=field,
            )
        if p.dtype != first.dtype:
            raise TubeletError(
                f"TIFF page {p.index} holds {_describe(p.dtype)} samples but page 0 holds {_describe(first.dtype)}; "
                "every page must have the same bit depth",
                field=field,
            )
    check_shape((len(pages), first.height, first.width), limits, field)
    return pages


def _describe(dtype: np.dtype) -> str:
    kind = {"u": "unsigned", "i": "signed", "f": "float"}[dtype.kind]
    return f"{8 * dtype.itemsize}-bit {kind}"


def _page_info(tags: dict[int, tuple], i: int, limits: Limits, field: str) -> TiffPageInfo:
    width = _one(tags, IMAGE_WIDTH, None, i, "ImageWidth", field)
    height = _one(tags, IMAGE_LENGTH, None, i, "ImageLength", field)
    if max(height, width) > limits.max_side:
        raise PayloadTooLarge(
            f"TIFF page {i} is {height} x {width} pixels; at most {limits.max_side} per side accepted", field=field
        )
    if min(height, width) < MIN_SIDE:
        raise TubeletError(
            f"TIFF page {i} is {height} x {width} pixels; at least {MIN_SIDE} x {MIN_SIDE} needed", field=field
        )
    spp = _one(tags, SAMPLES_PER_PIXEL, 1, i, "SamplesPerPixel", field)
    planar = _one(tags, PLANAR_CONFIG, 1, i, "PlanarConfiguration", field)
    photometric = _one(tags, PHOTOMETRIC, 1, i, "PhotometricInterpretation", field)
    if spp != 1 or photometric in (2, 5, 6):
        layout = "colour planes (planar)" if planar == 2 else "interleaved samples"
        raise TubeletError(
            f"TIFF page {i} holds {spp} samples per pixel as {layout} "
            f"(photometric {PHOTOMETRIC_NAMES.get(photometric, photometric)}); a thermal frame has one value "
            "per pixel: send greyscale pages, one per frame",
            field=field,
        )
    if photometric != 1:
        raise TubeletError(
            f"TIFF page {i} is photometric {PHOTOMETRIC_NAMES.get(photometric, photometric)}; "
            "only min-is-black greyscale pages are frames",
            field=field,
        )
    if _one(tags, IMAGE_DEPTH, 1, i, "ImageDepth", field) != 1:
        raise TubeletError(f"TIFF page {i} is a volume (ImageDepth > 1); send one page per frame", field=field)
    bits = _one(tags, BITS_PER_SAMPLE, 1, i, "BitsPerSample", field)
    fmt = _one(tags, SAMPLE_FORMAT, 1, i, "SampleFormat", field)
    if fmt not in SAMPLE_KINDS or bits not in (8, 16, 32, 64) or (fmt == 3 and bits == 8):
        raise TubeletError(
            f"TIFF page {i} has {bits}-bit samples of format {fmt}; accepted: 8/16/32/64-bit integers, "
            "16/32/64-bit floats",
            field=field,
        )
    dtype = np.dtype(f"{SAMPLE_KINDS[fmt]}{bits // 8}")
    compression = _one(tags, COMPRESSION, 1, i, "Compression", field)
    if compression not in COMPRESSIONS:
        name = COMPRESSION_NAMES.get(compression, f"code {compression}")
        raise UnsupportedMedia(
            f"TIFF page {i} is compressed with {name}; send uncompressed or deflate (zlib) TIFF pages", field=field
        )
    predictor = _one(tags, PREDICTOR, 1, i, "Predictor", field)
    if predictor not in PREDICTORS:
        raise TubeletError(f"TIFF page {i} uses an unknown predictor {predictor}", field=field)
    itemsize = dtype.itemsize
    if TILE_WIDTH in tags or TILE_OFFSETS in tags:
        tw = _one(tags, TILE_WIDTH, None, i, "TileWidth", field)
        tl = _one(tags, TILE_LENGTH, None, i, "TileLength", field)
        if not (16 <= tw <= limits.max_side * 2 and 16 <= tl <= limits.max_side * 2):
            raise TubeletError(
                f"TIFF page {i} has {tl} x {tw} tiles; tiles of 16 .. {2 * limits.max_side} px accepted", field=field
            )
        expected = math.ceil(height / tl) * math.ceil(width / tw)
        segment_bytes = tl * tw * itemsize
        offsets, counts = tags.get(TILE_OFFSETS, ()), tags.get(TILE_BYTE_COUNTS, ())
    else:
        rows = min(_one(tags, ROWS_PER_STRIP, height, i, "RowsPerStrip", field), height)
        if rows < 1:
            raise TubeletError(f"TIFF page {i} declares {rows} rows per strip", field=field)
        expected = math.ceil(height / rows)
        segment_bytes = rows * width * itemsize
        offsets, counts = tags.get(STRIP_OFFSETS, ()), tags.get(STRIP_BYTE_COUNTS, ())
    if len(offsets) != expected or len(counts) != expected:
        raise TubeletError(
            f"TIFF page {i} lists {len(offsets)} data offsets and {len(counts)} byte counts; "
            f"its size and layout need {expected}",
            field=field,
        )
    return TiffPageInfo(i, height, width, dtype, compression, segment_bytes, tuple(offsets), tuple(counts))


def check_tiff_segments(data: bytes, page: TiffPageInfo, field: str = "file") -> None:
    """Refuse segments outside the file, short uncompressed data, and deflate segments that
    expand beyond their declared size (a compression bomb); at most one segment's declared
    size is ever allocated."""
    for k, (off, n) in enumerate(zip(page.offsets, page.byte_counts)):
        if off + n > len(data):
            raise TubeletError(
                f"truncated or corrupt TIFF file: page {page.index} segment {k} runs past the end of the file",
                field=field,
            )
    if page.compression == 1:
        if sum(page.byte_counts) < page.height * page.width * page.dtype.itemsize:
            raise TubeletError(
                f"truncated or corrupt TIFF file: page {page.index} holds fewer bytes than its "
                f"{page.height} x {page.width} {_describe(page.dtype)} pixels need",
                field=field,
            )
        return
    view = memoryview(data)
    cap = page.segment_bytes
    for k, (off, n) in enumerate(zip(page.offsets, page.byte_counts)):
        d = zlib.decompressobj()
        produced = 0
        try:
            # Feed the segment in slices, asking for at most one byte over the cap: neither the
            # output nor zlib's copy of unread input (unconsumed_tail) grows past one slice.
            for at in range(off, off + n, DEFLATE_SLICE):
                produced += len(d.decompress(view[at : min(at + DEFLATE_SLICE, off + n)], cap - produced + 1))
                if produced > cap:
                    break
        except zlib.error as err:
            raise TubeletError(f"corrupt TIFF file: page {page.index} segment {k}: {err}", field=field) from None
        if produced > cap:
            raise PayloadTooLarge(
                f"TIFF page {page.index} segment {k} decompresses to more than its declared "
                f"{cap} bytes (a compression bomb?)",
                field=field,
            )


def parse_tiff(data: bytes, limits: Limits, field: str = "file") -> np.ndarray:
    """Decode a TIFF whose every page is one frame -> (T, H, W), after `walk_tiff` and
    `check_tiff_segments` bounded it."""
    import tifffile

    pages = walk_tiff(data, limits, field)
    for p in pages:
        check_tiff_segments(data, p, field)
    first = pages[0]
    out = np.empty((len(pages), first.height, first.width), dtype=first.dtype)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            for p in pages:
                page = tif.pages[p.index]
                frame = page.asarray(maxworkers=1)
                if frame.shape != (first.height, first.width) or frame.dtype != first.dtype:
                    raise TubeletError(
                        f"TIFF page {p.index} decodes to {frame.shape} {frame.dtype}, not its declared "
                        f"{(first.height, first.width)} {first.dtype}",
                        field=field,
                    )
                out[p.index] = frame
    except TubeletError:
        raise
    except Exception as err:  # tifffile raises many kinds on a broken file
        raise TubeletError(f"truncated or corrupt TIFF file: {type(err).__name__}: {err}", field=field) from None
    return out


# --------------------------------------------------------------------------- dispatch


def parse_upload(data: bytes, limits: Limits, filename: str | None = None, field: str = "file") -> np.ndarray:
    """Decode an uploaded tubelet, `.npy` or TIFF, by content (not by name)."""
    if not data:
        raise TubeletError("upload is empty", field=field)
    if data.startswith(NPY_MAGIC):
        return parse_npy(data, limits, field)
    if data[:4] in TIFF_MAGICS:
        return parse_tiff(data, limits, field)
    raise UnsupportedMedia(
        f"{filename or 'upload'}: unsupported file type; send an .npy array or a multi-page TIFF", field=field
    )


def parse_json_tubelet(value: Any, limits: Limits, field: str = "tubelet") -> np.ndarray:
    """A JSON (T, H, W) nested list -> float64 array; lengths checked before conversion.

    The JSON schema (strict numbers) has already refused booleans and strings.
    """
    if not isinstance(value, list):
        raise TubeletError("tubelet must be a (T, H, W) nested list of numbers", field=field)
    t = len(value)
    if t and isinstance(value[0], list) and value[0] and isinstance(value[0][0], list):
        check_shape((t, len(value[0]), len(value[0][0])), limits, field)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise TubeletError(f"tubelet is not a regular (T, H, W) array of numbers: {err}", field=field) from None
    check_shape(arr.shape, limits, field)
    return arr
