"""Video files decoded with PyAV into single-channel frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thermops.data.importers.base import ImportDataError


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """(T, H, W) uint8 grey frames and the stream's frame rate.

    Frames are converted to `gray` (BT.601 luma) by the decoder; 16-bit grey
    streams (gray16le/be) keep their counts as uint16.
    """
    import av

    if not path.is_file():
        raise ImportDataError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImportDataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            sixteen = stream.codec_context.pix_fmt in ("gray16le", "gray16be")
            frames = [f.to_ndarray(format="gray16le" if sixteen else "gray") for f in container.decode(stream)]
    except av.error.FFmpegError as err:
        raise ImportDataError(f"{path}: undecodable video: {err}") from None
    if not frames:
        raise ImportDataError(f"{path}: video has no frames")
    return np.stack(frames), fps
