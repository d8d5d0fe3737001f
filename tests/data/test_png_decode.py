"""Tests of the fast id-PNG decoder: the same values as PIL (palette indices, 16-bit, interlaced),
None for what it leaves to PIL, and the joint histogram (the label reader built on it:
test_label_png.py)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from spcl.data import png_decode
from spcl.data.png_decode import PNG_SIGNATURE, decode_id_png, pair_histogram

ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
GREY, PALETTE = 0, 3  # PNG colour types


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def hand_png(
    ids: np.ndarray,
    colour: int = GREY,
    interlace: bool = False,
    idat_parts: int = 1,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A PNG written from the specification (filter 0 rows, zlib, CRCs), independent of PIL/cv2."""
    height, width = ids.shape
    depth = 16 if ids.dtype == np.uint16 else 8
    rows = ids.astype(">u2" if depth == 16 else np.uint8)
    passes = [rows[y::dy, x::dx] for x, y, dx, dy in ADAM7] if interlace else [rows]
    raw = b"".join(b"\x00" + r.tobytes() for p in passes if p.size for r in p)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlace))
    data = zlib.compress(raw)
    step = -(-len(data) // idat_parts)
    idats = [chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step)]
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour == PALETTE else b""
    extras = b"".join(chunk(kind, body) for kind, body in extra)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + palette
        + extras
        + b"".join(idats)
        + chunk(b"IEND", b"")
    )


def pil_values(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, np.asarray(image)


def pil_png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def every_byte(shape: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 map holding each of 0..255 at least once, the rest random."""
    ids = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    ids.flat[:256] = np.arange(256)
    return ids


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("colour", [GREY, PALETTE])
def test_hand_written_pngs_decode_to_their_stored_ids(colour: int, interlace: bool) -> None:
    ids = every_byte((29, 43), seed=colour + interlace)
    transparency = (b"tRNS", bytes(range(256)) if colour == PALETTE else b"\x00\x05")
    data = hand_png(ids, colour, interlace, idat_parts=3, extra=((b"gAMA", b"\x00\x00\xb1\x8f"),))
    with_trns = hand_png(ids, colour, interlace, extra=(transparency,))
    for png in (data, with_trns):
        got = decode_id_png(png)
        assert got is not None and got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, ids)  # palette: the indices, not colours
        np.testing.assert_array_equal(got, pil_values(png)[1])


def test_sixteen_bit_grey_keeps_its_values_and_can_be_refused() -> None:
    ids = np.random.default_rng(1).integers(0, 65536, (17, 23)).astype(np.uint16)
    ids.flat[:3] = (0, 255, 65535)
    for png in (hand_png(ids), hand_png(ids, interlace=True), pil_png(Image.fromarray(ids))):
        got = decode_id_png(png)
        assert got is not None and got.dtype == np.uint16
        np.testing.assert_array_equal(got, ids)
        assert decode_id_png(png, bit_depths=(8,)) is None


def test_what_it_leaves_to_pil_is_none() -> None:
    ids = np.random.default_rng(2).integers(0, 4, (12, 20)).astype(np.uint8)
    palette = Image.fromarray(ids, "P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    good = hand_png(ids)
    corrupt = bytearray(good)
    corrupt[len(PNG_SIGNATURE) + 30] ^= 0xFF  # inside the IDAT data: its CRC no longer matches
    left_to_pil = {
        "1-bit grey": pil_png(Image.fromarray(ids > 1)),
        "4-bit palette": pil_png(palette, bits=4),
        "grey + alpha": pil_png(Image.fromarray(ids).convert("LA")),
        "RGB": pil_png(Image.fromarray(np.stack([ids] * 3, axis=-1))),
        "not a PNG": b"GIF89a" + bytes(40),
        "truncated": good[: len(good) - 20],
        "no IEND": good[: -len(chunk(b"IEND", b""))],
        "bad CRC": bytes(corrupt),
        "empty": b"",
    }
    for name, data in left_to_pil.items():
        assert decode_id_png(data) is None, name
    np.testing.assert_array_equal(decode_id_png(pil_png(palette)), ids)  # 8-bit palette: fast


def brute_histogram(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    expected = np.zeros((256, 256), dtype=np.int64)
    for a, b in zip(rows.ravel().tolist(), cols.ravel().tolist(), strict=True):
        expected[a, b] += 1
    return expected


def test_pair_histogram_counts_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    rows = every_byte((61, 97), seed=5)
    cols = rng.integers(0, 256, rows.shape).astype(np.uint8)  # noise: counted per pixel
    expected = brute_histogram(rows, cols)
    np.testing.assert_array_equal(pair_histogram(rows, cols), expected)
    monkeypatch.setattr(png_decode, "FLOAT32_EXACT", 16)  # the bincount branch of huge maps
    np.testing.assert_array_equal(pair_histogram(rows, cols), expected)
    with pytest.raises(ValueError, match="uint8"):
        pair_histogram(rows.astype(np.uint16), cols)


def test_pair_histogram_counts_label_like_maps_as_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.repeat(np.repeat(every_byte((8, 32), seed=7), 9, axis=0), 25, axis=1)
    cols = np.roll(rows, 5, axis=1) // 3  # shifted boundaries, other values
    cols[20:40, 100:500] = 254
    cols[-1, -1], rows[0, 0] = 7, 255  # runs of one pixel at both ends
    expected = brute_histogram(rows, cols)
    calls: list[object] = []
    monkeypatch.setattr(png_decode.cv2, "calcHist", lambda *a: calls.append(a))
    np.testing.assert_array_equal(pair_histogram(rows, cols), expected)
    assert not calls  # the run branch, not the per-pixel one
    empty = np.zeros((0, 5), dtype=np.uint8)
    np.testing.assert_array_equal(pair_histogram(empty, empty), np.zeros((256, 256)))
