"""Read TensorBoard event files back: TFRecord frames (length, its CRC, the data, its CRC) of ``Event``
protos, decoded with tensorboardX's own proto classes, the way TensorBoard reads them."""

from __future__ import annotations

import struct

from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scalars(data: bytes) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of one event file's bytes; every frame's CRCs are checked."""
    found: dict[str, dict[int, float]] = {}
    at = 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == _masked(header), "corrupt length"
        body = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == _masked(body), "corrupt record"
        at += 16 + length
        event = Event.FromString(body)
        for value in event.summary.value:
            found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def merged(files: dict[str, bytes]) -> dict[str, dict[int, float]]:
    """The scalars of a folder's event files, read in name order as TensorBoard does."""
    out: dict[str, dict[int, float]] = {}
    for name in sorted(files):
        for tag, points in scalars(files[name]).items():
            out.setdefault(tag, {}).update(points)
    return out
