"""Request limits of the service; every violation is a 4xx with a message saying which limit and its value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_text_chars: int = 500
    max_k: int = 100
    max_images: int = 4  # reference images per request
