"""Reading a whole answer from a server we do not control (a Stash, or whatever answers
at the URL we were given) without trusting its size: at most `limit` bytes are kept,
after decompression, and a gzip answer is inflated no further than that. A small
compressed reply can otherwise inflate to gigabytes in memory (a gzip bomb)."""

from __future__ import annotations

import zlib
from typing import Callable

from .errors import ServerError
from .reporting import human_size

# GraphQL answers we ask for (server info, settings, stats) are a few KiB.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
READ_CHUNK = 64 * 1024
GZIP = ("gzip", "x-gzip")


def read_bounded(read: Callable[[int], bytes], sender: str, encoding: str = "", limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body `read(n)` gives (raw bytes, as sent), decoded when its Content-Encoding
    (`encoding`) is gzip. ServerError, naming `sender`, when it holds more than
    `limit` bytes, uses an encoding we cannot bound, or is a damaged gzip stream."""
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ("identity", *GZIP):
        raise ServerError(f"{sender} answered in the {encoding!r} encoding, which was not asked for")
    inflater = zlib.decompressobj(31) if encoding in GZIP else None
    body = bytearray()
    try:
        while chunk := read(READ_CHUNK):
            if inflater:
                chunk = inflater.decompress(chunk, limit + 1 - len(body))  # never more than the bound
            body += chunk
            if len(body) > limit:
                raise ServerError(
                    f"{sender} sent an answer larger than {human_size(limit)}: refused (is the URL a Stash server?)"
                )
    except zlib.error as error:
        raise ServerError(f"{sender} sent a damaged gzip answer ({error})") from None
    if inflater and not inflater.eof:
        raise ServerError(f"{sender} sent a gzip answer that ends in the middle")
    return bytes(body)


def one_line(text: str, limit: int = 200) -> str:
    """Text a server or a process wrote, made fit for a message: whitespace folded, at
    most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
