"""Uploaded image bytes -> pixels, with the size checked before anything is decoded.

A 30 KB PNG can declare 50,000 x 50,000 pixels and make the decoder allocate gigabytes, so the
width and height are read from the file's header first (`image_size`) and a picture over the
service's pixel limit is refused without decoding it. The header readers cover the formats the
service accepts, JPEG, PNG, WebP and BMP; anything else is refused as an unsupported format.
"""
import struct

from ferkeras.errors import UserError
from ferkeras.deploy.faces import decode_image_bytes

FORMAT_LIST = "JPEG, PNG, WebP or BMP"
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments of that range.
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageRejected(UserError):
    """An upload the service refuses; `status` is the HTTP status that says why."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def image_size(data):
    """(format, width, height) read from the header of a JPEG, PNG, WebP or BMP file; None for
    anything else (or a header cut short)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return "BMP", abs(width), abs(height)  # a negative height means rows stored top-down
    except struct.error:
        return None
    return None


def _jpeg_size(data):
    """Walk the JPEG segments up to the first start-of-frame, which holds height and width."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return "JPEG", width, height
        offset += 2 + length
    return None


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the key-frame start code
        width, height = struct.unpack("<HH", data[26:30])
        return "WebP", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: width-1 and height-1 packed in 14 bits each
        (bits,) = struct.unpack("<I", data[21:25])
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas width-1 and height-1 in 24 bits each
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "WebP", width, height
    return None


def decode_upload(data, name, max_pixels):
    """Pixels of an uploaded image as `ferkeras.deploy.faces.decode_image` gives them, or `ImageRejected`:
    400 empty, 422 not an image of a supported format or undecodable, 413 too many pixels."""
    if not data:
        raise ImageRejected(400, f"{name}: empty upload; send the bytes of a {FORMAT_LIST} image")
    header = image_size(data)
    if header is None:
        raise ImageRejected(422, f"{name}: not a readable image ({len(data):,} bytes that are not "
                                 f"{FORMAT_LIST}); send a photo in one of these formats")
    kind, width, height = header
    if width * height > max_pixels:
        raise ImageRejected(413, f"{name}: {kind} of {width}x{height} = {width * height / 1e6:.1f} megapixels, "
                                 f"over this server's limit of {max_pixels / 1e6:.1f} (--max_pixels); "
                                 "send a smaller picture")
    try:
        pixels = decode_image_bytes(data, name)
    except UserError as exc:
        raise ImageRejected(422, str(exc)) from None
    if pixels.shape[0] * pixels.shape[1] != width * height:  # a header that lies about the size
        raise ImageRejected(422, f"{name}: not a readable image (its header says {width}x{height}, its "
                                 f"pixels are {pixels.shape[1]}x{pixels.shape[0]}); send an undamaged file")
    return pixels
