"""Requests for the served bento, good and hostile, as raw HTTP bodies.

Shared by the service tests and the load tests (benchmarks/locustfile.py): each
`Payload` is a route, a body and its headers, plus what the answer must be (200 with
the prediction of `tubelet` through `camera`, or one of `statuses` whose message holds
`fragment`). The hostile ones are the issue-19 findings: declared-size bombs, a
compression bomb, truncated and mixed-page TIFFs, colour TIFFs, JSON booleans, a 4-D
JSON array, wrong multipart parts, binary bodies to the JSON route.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import tifffile

BOUNDARY = "thermopsboundary7e3f"


@dataclass
class Payload:
    """One HTTP request and the answer it must get."""

    name: str
    route: str
    body: bytes
    headers: dict[str, str]
    statuses: tuple[int, ...] = (200,)
    fragment: str = ""
    camera: str = ""  # good requests: the camera, and the tubelet as the server reads it
    tubelet: np.ndarray | None = field(default=None, repr=False)

    @property
    def good(self) -> bool:
        return self.statuses == (200,)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def tiff_pages(frames, **kw) -> bytes:
    """A TIFF written one page at a time (the usual `TiffWriter.write` loop: one series per page)."""
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for f in frames:
            w.write(f, **kw)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, dict[str, str]]:
    """(name, content, filename or None) parts -> body and headers of a multipart/form-data request."""
    out = b""
    for name, content, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        out += head.encode() + b"\r\n" + content + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def upload(name: str, data: bytes, camera: str, filename: str = "t.npy", **kw) -> Payload:
    body, headers = multipart([("file", data, filename), ("camera_id", camera.encode(), None)])
    return Payload(name, "/classify_upload", body, headers, camera=camera, **kw)


def as_json(name: str, values, camera: str, **kw) -> Payload:
    body = json.dumps({"tubelet": values, "camera_id": camera}).encode()
    return Payload(name, "/classify", body, {"Content-Type": "application/json"}, camera=camera, **kw)


# --------------------------------------------------------------------------- tubelets


def counts_tubelet(t: int = 8, h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A uint16 raw-counts tubelet (T, H, W) of the test's linear camera (40 counts/K, offset 7000):
    a warm blob on a 15 C background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    blob = 6.0 * np.exp(-(((yy - h / 2) / (h / 5)) ** 2 + ((xx - w / 2) / (w / 6)) ** 2))
    celsius = 15.0 + blob[None] + rng.normal(0, 0.05, (t, h, w))
    return np.round(7000.0 + 40.0 * celsius).astype(np.uint16)


def display8_tubelet(t: int = 5, h: int = 40, w: int = 48, seed: int = 1) -> np.ndarray:
    """A uint8 display-levels tubelet (T, H, W)."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, (t, h, w)).astype(np.uint8)


# --------------------------------------------------------------------------- good


def good_payloads() -> list[Payload]:
    """Good requests of several shapes, cameras and encodings (the storm cycles through them)."""
    c8 = counts_tubelet(8, 32, 32, seed=11)
    c6 = counts_tubelet(6, 40, 30, seed=12)
    d5 = display8_tubelet(5, 40, 48, seed=13)
    d4 = display8_tubelet(4, 16, 16, seed=14)
    return [
        as_json("json-counts-8x32x32", c8.tolist(), "cam-lin", tubelet=c8),
        upload("npy-counts-8x32x32", npy_bytes(c8), "cam-lin", tubelet=c8),
        upload("tiff-loop-counts-6x40x30", tiff_pages(c6), "cam-lin", filename="t.tiff", tubelet=c6),
        upload("tiff-zlib-display8-5x40x48", tiff_bytes(d5, compression="zlib"), "cam-d8", "t.tif", tubelet=d5),
        upload("npy-display8-5x40x48", npy_bytes(d5), "cam-d8", tubelet=d5),
        as_json("json-display8-4x16x16", d4.tolist(), "cam-d8", tubelet=d4),
    ]


# --------------------------------------------------------------------------- hostile


def npy_declaring(shape: tuple[int, ...], dtype: str = "<f8", data: bytes = b"\0" * 64) -> bytes:
    """An .npy file whose header declares `shape` x `dtype` but holds only `data`."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def zlib_tiff_bomb(side: int = 64, inflated: int = 128 << 20) -> bytes:
    """A one-page zlib TIFF declaring side x side uint16 pixels whose strip inflates to `inflated` bytes."""
    src = bytearray(tiff_bytes(np.zeros((side, side), np.uint16), compression="zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(src))) as tif:
        tags = tif.pages[0].tags
        offsets, counts = tags["StripOffsets"], tags["StripByteCounts"]
    payload = zlib.compress(b"\0" * inflated, 9)
    fmt = {3: "<H", 4: "<I", 16: "<Q"}
    struct.pack_into(fmt[int(offsets.dtype)], src, offsets.valueoffset, len(src))
    struct.pack_into(fmt[int(counts.dtype)], src, counts.valueoffset, len(payload))
    return bytes(src) + payload


def tiff_with_tag(arr: np.ndarray, tag: str, value: int) -> bytes:
    """An uncompressed TIFF with one SHORT/LONG tag value patched (e.g. Compression = LZW)."""
    src = bytearray(tiff_bytes(arr))
    with tifffile.TiffFile(io.BytesIO(bytes(src))) as tif:
        t = tif.pages[0].tags[tag]
    fmt = {3: "<H", 4: "<I"}[int(t.dtype)]
    struct.pack_into(fmt, src, t.valueoffset, value)
    return bytes(src)


def tiff_ifd_loop(arr: np.ndarray) -> bytes:
    """A two-page TIFF whose second page points back to the first."""
    src = bytearray(tiff_pages(arr[:2]))
    first = struct.unpack_from("<I", src, 4)[0]
    n1 = struct.unpack_from("<H", src, first)[0]
    second = struct.unpack_from("<I", src, first + 2 + 12 * n1)[0]
    n2 = struct.unpack_from("<H", src, second)[0]
    struct.pack_into("<I", src, second + 2 + 12 * n2, first)
    return bytes(src)


def hostile_payloads(limits) -> list[Payload]:
    """Bad and hostile requests with the status (and a fragment of the message) each must get."""
    g = counts_tubelet(4, 16, 16, seed=5)
    d = display8_tubelet(4, 16, 16, seed=6)
    big_json = b'{"camera_id": "cam-lin", "tubelet": [' + b"0," * (limits.max_json_bytes // 2) + b"0]}"
    comma_bomb = b'{"camera_id": "cam-lin", "tubelet": [[[' + b"0," * (limits.max_elements + 100) + b"0]]]}"
    nan = np.full((2, 8, 8), np.nan)
    return [
        upload("npy-declares-32GiB", npy_declaring((4096, 4096, 256)), "cam-lin", statuses=(413,), fragment="frames"),
        upload("npy-declares-8GiB", npy_declaring((2048, 2048, 256)), "cam-lin", statuses=(413,), fragment="frames"),
        upload(
            "npy-declares-over-max-elements",
            npy_declaring((32, 128, 128)),
            "cam-lin",
            statuses=(413,),
            fragment="values",
        ),
        upload(
            "npy-declares-more-than-it-holds",
            npy_declaring((4, 16, 16)),
            "cam-lin",
            statuses=(400,),
            fragment="truncated",
        ),
        upload(
            "npy-object-pickle",
            npy_bytes(np.array([{"a": 1}], dtype=object)),
            "cam-lin",
            statuses=(400,),
            fragment="pickles",
        ),
        upload("npy-bool", npy_bytes(g > 7000), "cam-lin", statuses=(400,), fragment="not numeric"),
        upload("npy-complex", npy_bytes(g.astype(np.complex64)), "cam-lin", statuses=(400,), fragment="not numeric"),
        upload("npy-4d", npy_bytes(g[None]), "cam-lin", statuses=(400,), fragment="(T, H, W)"),
        upload("npy-nan", npy_bytes(np.where(g > 0, np.nan, 0.0)), "cam-lin", statuses=(400,), fragment="non-finite"),
        upload("npy-truncated", npy_bytes(g)[:-100], "cam-lin", statuses=(400,), fragment="truncated"),
        upload(
            "tiff-zlib-bomb-128MiB", zlib_tiff_bomb(), "cam-lin", "t.tif", statuses=(413,), fragment="compression bomb"
        ),
        upload("tiff-truncated", tiff_pages(g)[:1500], "cam-lin", "t.tif", statuses=(400,), fragment="TIFF"),
        upload(
            "tiff-mixed-sizes", tiff_pages([g[0], g[1, :12]]), "cam-lin", "t.tif", statuses=(400,), fragment="same size"
        ),
        upload(
            "tiff-mixed-bit-depths",
            tiff_pages([g[0], (g[1] // 64).astype(np.uint8)]),
            "cam-lin",
            "t.tif",
            statuses=(400,),
            fragment="same bit depth",
        ),
        upload(
            "tiff-rgb-contiguous",
            tiff_bytes(np.zeros((16, 16, 3), np.uint8), photometric="rgb"),
            "cam-d8",
            "t.tif",
            statuses=(400,),
            fragment="samples per pixel",
        ),
        upload(
            "tiff-rgb-planar",
            tiff_bytes(np.zeros((3, 16, 16), np.uint8), photometric="rgb", planarconfig="separate"),
            "cam-d8",
            "t.tif",
            statuses=(400,),
            fragment="colour planes",
        ),
        upload("tiff-lzw", tiff_with_tag(d[0], "Compression", 5), "cam-d8", "t.tif", statuses=(415,), fragment="LZW"),
        upload(
            "tiff-too-many-pages",
            tiff_pages(np.zeros((limits.max_frames + 1, 8, 8), np.uint8)),
            "cam-d8",
            "t.tif",
            statuses=(413,),
            fragment="pages",
        ),
        upload("tiff-ifd-loop", tiff_ifd_loop(d), "cam-d8", "t.tif", statuses=(400,), fragment="loops"),
        upload("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "cam-lin", "t.png", statuses=(415,), fragment="unsupported"),
        upload("empty-file", b"", "cam-lin", statuses=(400,), fragment="empty"),
        upload("unknown-camera", npy_bytes(g), "nope", statuses=(404,), fragment="unknown camera"),
        upload("16bit-to-display8", npy_bytes(g), "cam-d8", statuses=(400,), fragment="0..255"),
        as_json("json-booleans", (g > 7000).tolist(), "cam-lin", statuses=(400,), fragment="valid number"),
        as_json("json-strings", [[["1.5"] * 8] * 8], "cam-lin", statuses=(400,), fragment="valid number"),
        as_json("json-4d", g[None].tolist(), "cam-lin", statuses=(400,), fragment="valid number"),
        as_json("json-ragged", [g[0].tolist(), g[1, :3].tolist()], "cam-lin", statuses=(400,), fragment="regular"),
        as_json("json-too-many-frames", np.zeros((limits.max_frames + 1, 8, 8)).tolist(), "cam-lin", statuses=(413,)),
        Payload(
            "json-nan",
            "/classify",
            b'{"tubelet": ' + json.dumps(nan.tolist()).encode() + b', "camera_id": "cam-lin"}',
            {"Content-Type": "application/json"},
            statuses=(400,),
            fragment="non-finite",
        ),
        Payload(
            "json-deep-nesting",
            "/classify",
            b'{"camera_id": "cam-lin", "tubelet": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            {"Content-Type": "application/json"},
            statuses=(400,),
        ),
        Payload("json-over-body-limit", "/classify", big_json, {"Content-Type": "application/json"}, statuses=(413,)),
        Payload(
            "json-comma-bomb",
            "/classify",
            comma_bomb,
            {"Content-Type": "application/json"},
            statuses=(413,),
            fragment="values",
        ),
        Payload(
            "binary-to-json-route",
            "/classify",
            npy_bytes(g),
            {"Content-Type": "application/octet-stream"},
            statuses=(415,),
            fragment="application/json",
        ),
        Payload(
            "multipart-to-json-route",
            "/classify",
            *multipart([("file", npy_bytes(g), "t.npy"), ("camera_id", b"cam-lin", None)]),
            statuses=(415,),
        ),
        Payload(
            "wrong-part-name",
            "/classify_upload",
            *multipart([("upload", npy_bytes(g), "t.npy"), ("camera_id", b"cam-lin", None)]),
            statuses=(400,),
            fragment="unexpected multipart part",
        ),
        Payload(
            "file-part-as-text-url",
            "/classify_upload",
            *multipart([("file", b"http://10.0.0.1/x.npy", None), ("camera_id", b"cam-lin", None)]),
            statuses=(400,),
            fragment="must be a file",
        ),
        Payload(
            "missing-camera-part",
            "/classify_upload",
            *multipart([("file", npy_bytes(g), "t.npy")]),
            statuses=(400,),
            fragment="camera_id",
        ),
        Payload(
            "multipart-unterminated",
            "/classify_upload",
            multipart([("file", npy_bytes(g), "t.npy"), ("camera_id", b"cam-lin", None)])[0][:-40],
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            statuses=(400,),
            fragment="malformed multipart",
        ),
        Payload(
            "multipart-without-boundary",
            "/classify_upload",
            b"--x\r\n\r\n",
            {"Content-Type": "multipart/form-data"},
            statuses=(400,),
            fragment="boundary",
        ),
        Payload(
            "upload-over-limit",
            "/classify_upload",
            *multipart([("file", b"\0" * (limits.max_upload_bytes + 1), "t.npy"), ("camera_id", b"cam-lin", None)]),
            statuses=(413,),
        ),
    ]
