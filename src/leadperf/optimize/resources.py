"""Resource optimisation: screenshots to a byte budget, image re-encoding, text compression.

Example::

    opt = ResourceOptimizer(target_size_kb=200)
    small = opt.optimize_screenshot(png_bytes)              # JPEG bytes <= 200 KB
    info = opt.optimize_screenshot_info(png_bytes, format="WEBP")
    info.quality, info.scale, info.encodes
    body, coding = opt.compress_response(html, accept_encoding="gzip, br;q=0.9")

Sizes in KB are KiB (1 KB = 1024 bytes). Image work is CPU-bound: in async code use the
``*_async`` variants, which run in anyio worker threads (at most ``max_workers`` at once)
and keep the event loop free. Pillow is imported on first image use
(``pip install 'leadperf[images]'``).

Length: over 600 lines only because every public method carries its Args/Returns/
Raises docstring; the code itself is under 500 lines.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
import anyio.to_thread
import attrs

from .._core.lifecycle import SyncResource
from .._core.validate import int_in_range, positive_int
from ..errors import ConfigError, LeadperfError
from . import _images, _text
from ._text import StreamCompressor, StreamDecompressor, negotiate_encoding

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "ResourceOptimizer",
    "ResourceStats",
    "ScreenshotResult",
    "StreamCompressor",
    "StreamDecompressor",
    "get_resource_optimizer",
    "negotiate_encoding",
]

T = TypeVar("T")
KB = 1024
#: Lowest quality the screenshot search may use before it scales the image down instead.
DEFAULT_MIN_QUALITY = 30


@attrs.frozen
class ScreenshotResult:
    """Bytes from :meth:`ResourceOptimizer.optimize_screenshot_info` and what was done.

    ``quality`` is the highest that fits at the final size (PNG: 100 = lossless, lower =
    palette of about ``2.56 * quality`` colours); ``scale`` is the linear factor applied
    (1.0 = full size); sizes are in bytes.
    """

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    format: str
    quality: int
    scale: float
    width: int
    height: int
    original_width: int
    original_height: int
    original_size: int
    final_size: int
    target_size: int
    encodes: int
    elapsed_ms: float

    @property
    def scaled(self) -> bool:
        """True when the image had to be scaled down to fit."""
        return self.scale < 1.0

    @property
    def ratio(self) -> float:
        """``final_size / original_size``."""
        return self.final_size / self.original_size if self.original_size else 0.0


@attrs.frozen
class ResourceStats:
    """Counters since the optimizer was created (sizes in bytes, times in milliseconds).

    ``encodes`` counts the screenshot search's encodes; ``compress_image`` makes one each
    (``images_compressed``). Image bytes and ms cover both; ``errors`` counts calls that
    raised a leadperf error.
    """

    screenshots: int
    screenshots_scaled: int
    images_compressed: int
    encodes: int
    image_bytes_in: int
    image_bytes_out: int
    image_ms: float
    texts_compressed: int
    texts_decompressed: int
    text_bytes_in: int
    text_bytes_out: int
    text_ms: float
    errors: int

    @property
    def encodes_per_screenshot(self) -> float:
        """Average encodes per optimised screenshot (0.0 before the first)."""
        return self.encodes / self.screenshots if self.screenshots else 0.0


def _quality(value: Any, key: str) -> int:
    return int_in_range(value, key, 1, 100)


def _target_bytes(value: Any, key: str = "target_size_kb") -> int:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not value > 0
        or value != value  # NaN
        or value == float("inf")
    ):
        raise ConfigError(
            f"{key}: the target size must be a number of KB > 0, got {value!r}", key=key
        )
    return max(1, int(value * KB))


class ResourceOptimizer(SyncResource):
    """Screenshots to a byte budget, image re-encoding and text compression.

    ``target_size_kb`` and ``quality`` (the highest quality tried) default to
    ``settings.resources.screenshot_target_size_kb`` / ``image_quality``
    (``SCREENSHOT_TARGET_SIZE_KB``, ``IMAGE_COMPRESSION_QUALITY``). ``min_quality`` is the
    lowest quality accepted before scaling down; ``max_pixels`` bounds decoded images
    (None: Pillow's ``MAX_IMAGE_PIXELS``); ``background`` is the colour transparent pixels
    become in JPEG; ``max_workers`` bounds concurrent ``*_async`` calls (default: CPUs).
    Bad arguments raise :class:`ConfigError`. Safe to share between threads.
    """

    def __init__(
        self,
        target_size_kb: int | None = None,
        quality: int | None = None,
        settings: Settings | None = None,
        *,
        min_quality: int = DEFAULT_MIN_QUALITY,
        max_pixels: int | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
        max_workers: int | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.from_env()
        self.settings = settings
        self.target_size_kb = positive_int(
            settings.resources.screenshot_target_size_kb
            if target_size_kb is None
            else target_size_kb,
            "target_size_kb",
        )
        self.quality = _quality(
            settings.resources.image_quality if quality is None else quality, "quality"
        )
        self.min_quality = _quality(min_quality, "min_quality")
        if self.min_quality > self.quality:
            raise ConfigError(
                f"min_quality: must be <= quality ({self.quality}), got {min_quality!r}",
                key="min_quality",
            )
        self.max_pixels = None if max_pixels is None else positive_int(max_pixels, "max_pixels")
        if (
            not isinstance(background, tuple)
            or len(background) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in background)
        ):
            raise ConfigError(
                f"background: must be an (r, g, b) tuple of 0..255, got {background!r}",
                key="background",
            )
        self.background = background
        self.max_workers = positive_int(
            max_workers if max_workers is not None else (os.cpu_count() or 2), "max_workers"
        )
        self._mark_open()  # ready at construction: nothing to acquire
        self._lock = threading.Lock()
        self._limiters: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )
        self._counts: dict[str, float] = dict.fromkeys(attrs.fields_dict(ResourceStats), 0)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Mark the optimizer closed; idempotent. It holds no threads or files of its own.

        Later calls raise :class:`ClosedError`.
        """
        super().close()

    def __repr__(self) -> str:
        return (
            f"<ResourceOptimizer {self._state.value} target={self.target_size_kb}KB "
            f"quality={self.min_quality}..{self.quality}>"
        )

    # -- stats --------------------------------------------------------------------------------

    def stats(self) -> ResourceStats:
        """A frozen snapshot of the counters.

        Returns:
            A :class:`ResourceStats`.
        """
        with self._lock:
            counts = dict(self._counts)
        floats = {"image_ms", "text_ms"}
        values: dict[str, Any] = {
            name: float(value) if name in floats else int(value) for name, value in counts.items()
        }
        return ResourceStats(**values)

    def _add(self, **deltas: float) -> None:
        with self._lock:
            for key, value in deltas.items():
                self._counts[key] += value

    def _guard(self, func: Callable[[], T]) -> T:
        """Run ``func``, counting leadperf errors it raises."""
        self._check_open()
        try:
            return func()
        except LeadperfError:
            self._add(errors=1)
            raise

    # -- screenshots ---------------------------------------------------------------------------

    def optimize_screenshot(
        self, data: bytes, target_size_kb: float | None = None, format: str = "JPEG"
    ) -> bytes:
        """Re-encode a screenshot as ``format`` within ``target_size_kb``.

        Picks the highest quality (<= ``quality``, >= ``min_quality``) whose output fits;
        scales down only when ``min_quality`` at full size is too big.

        Args:
            data: the encoded image (PNG, JPEG, WEBP...).
            target_size_kb: the size to fit in (default: the optimizer's ``target_size_kb``).
            format: ``"JPEG"``, ``"PNG"`` or ``"WEBP"``.

        Returns:
            The re-encoded image.

        Raises:
            ImageError: empty, corrupt, truncated or oversized (``max_pixels``) image.
            ConfigError: a bad target or format.
            ClosedError: the optimizer was closed.
        """
        return self.optimize_screenshot_info(data, target_size_kb, format).data

    def optimize_screenshot_info(
        self,
        data: bytes,
        target_size_kb: float | None = None,
        format: str = "JPEG",
        *,
        quality: int | None = None,
        min_quality: int | None = None,
    ) -> ScreenshotResult:
        """:meth:`optimize_screenshot`, returning the bytes with what was done.

        Args:
            data: the encoded image.
            target_size_kb: the size to fit in (default: the optimizer's).
            format: ``"JPEG"``, ``"PNG"`` or ``"WEBP"``.
            quality: the highest quality tried for this call (PNG starts lossless at 100
                unless given).
            min_quality: the lowest quality tried before scaling down, for this call.

        Returns:
            A :class:`ScreenshotResult`: the bytes, the quality and size used, whether it fit.

        Raises:
            ImageError: empty, corrupt, truncated or oversized image.
            ConfigError: a bad target, format or quality.
            ClosedError: the optimizer was closed.
        """
        return self._guard(
            lambda: self._optimize(data, target_size_kb, format, quality, min_quality)
        )

    def _optimize(
        self,
        data: bytes,
        target_size_kb: float | None,
        format: str,
        quality: int | None,
        min_quality: int | None,
    ) -> ScreenshotResult:
        start = time.perf_counter()
        target = _target_bytes(self.target_size_kb if target_size_kb is None else target_size_kb)
        spec = _images.normalize_format(format)
        q_max = _quality(
            quality if quality is not None else (spec.default_top or self.quality), "quality"
        )
        q_min = _quality(self.min_quality if min_quality is None else min_quality, "min_quality")
        if q_min > q_max:
            raise ConfigError(
                f"min_quality: must be <= quality ({q_max}), got {q_min}", key="min_quality"
            )
        img = _images.decode(data, max_pixels=self.max_pixels)
        original = img.size
        prepared = _images.prepare(img, spec, background=self.background)
        fit = _images.fit_to_budget(prepared, spec, target=target, q_min=q_min, q_max=q_max)
        ms = _images.elapsed_ms(start)
        self._add(
            screenshots=1,
            screenshots_scaled=1 if fit.scale < 1.0 else 0,
            encodes=fit.encodes,
            image_bytes_in=len(data),
            image_bytes_out=len(fit.data),
            image_ms=ms,
        )
        return ScreenshotResult(
            data=fit.data,
            format=spec.name,
            quality=fit.quality,
            scale=fit.scale,
            width=fit.width,
            height=fit.height,
            original_width=original[0],
            original_height=original[1],
            original_size=len(data),
            final_size=len(fit.data),
            target_size=target,
            encodes=fit.encodes,
            elapsed_ms=ms,
        )

    # -- images --------------------------------------------------------------------------------

    def compress_image(
        self,
        data: bytes,
        format: str = "JPEG",
        quality: int | None = None,
        *,
        max_width: int | None = None,
        max_height: int | None = None,
    ) -> bytes:
        """Re-encode an image once as ``format`` at ``quality``.

        Transparent pixels become ``background`` in JPEG.

        Args:
            data: the encoded image.
            format: ``"JPEG"``, ``"PNG"`` or ``"WEBP"``.
            quality: 1..100 (default: the optimizer's ``quality``).
            max_width: shrink to fit this width, keeping the aspect ratio (never enlarging).
            max_height: shrink to fit this height, likewise.

        Returns:
            The re-encoded image.

        Raises:
            ImageError: empty, corrupt, truncated or oversized image.
            ConfigError: a bad format, quality or box.
            ClosedError: the optimizer was closed.
        """

        def run() -> bytes:
            start = time.perf_counter()
            spec = _images.normalize_format(format)
            q = _quality(
                quality if quality is not None else (spec.default_top or self.quality), "quality"
            )
            box_w = None if max_width is None else positive_int(max_width, "max_width")
            box_h = None if max_height is None else positive_int(max_height, "max_height")
            img = _images.prepare(
                _images.decode(data, max_pixels=self.max_pixels), spec, background=self.background
            )
            if box_w or box_h:
                w, h = img.size
                factor = min((box_w or w) / w, (box_h or h) / h, 1.0)
                if factor < 1.0:
                    from PIL import Image

                    img = img.resize(
                        (max(1, round(w * factor)), max(1, round(h * factor))),
                        Image.Resampling.LANCZOS,
                        reducing_gap=2.0,
                    )
            out = _images.encode(img, spec, q)
            self._add(
                images_compressed=1,
                image_bytes_in=len(data),
                image_bytes_out=len(out),
                image_ms=_images.elapsed_ms(start),
            )
            return out

        return self._guard(run)

    # -- text ----------------------------------------------------------------------------------

    def compress_text(
        self,
        data: str | bytes,
        algorithm: str = "br",
        level: int | None = None,
        accept_encoding: str | None = None,
    ) -> bytes:
        """Compress text with ``br``, ``gzip`` or ``deflate``.

        With ``accept_encoding`` the coding is negotiated instead of ``algorithm`` and may be
        ``identity`` (data returned as is): use :meth:`compress_response` to learn which one
        was chosen.

        Args:
            data: ``str`` (UTF-8 encoded) or bytes.
            algorithm: ``"br"``, ``"gzip"`` or ``"deflate"``.
            level: brotli 0..11 (default 5), gzip/deflate 0..9 (default 6).
            accept_encoding: a request's ``Accept-Encoding`` header, or None.

        Returns:
            The compressed bytes.

        Raises:
            ConfigError: a bad algorithm, level or data type.
            ClosedError: the optimizer was closed.
        """
        return self.compress_response(data, accept_encoding, algorithm=algorithm, level=level)[0]

    def compress_response(
        self,
        data: str | bytes,
        accept_encoding: str | None,
        *,
        algorithm: str = "br",
        level: int | None = None,
    ) -> tuple[bytes, str]:
        """Compress a response body for a client's ``Accept-Encoding`` header.

        Args:
            data: ``str`` (UTF-8 encoded) or bytes.
            accept_encoding: the request's header; None means no negotiation (``algorithm``
                is used) and a given but empty header selects ``identity``.
            algorithm: the coding used without negotiation.
            level: applies when the chosen coding is ``algorithm``'s; otherwise that coding's
                default level is used.

        Returns:
            ``(body, content_encoding)``.

        Raises:
            ConfigError: a bad algorithm, level or data type.
            ClosedError: the optimizer was closed.
        """

        def run() -> tuple[bytes, str]:
            start = time.perf_counter()
            raw = _text.as_bytes(data)
            wanted = _text.normalize_algorithm(algorithm)
            coding = wanted if accept_encoding is None else negotiate_encoding(accept_encoding)
            lvl = _text.check_level(coding, level if coding == wanted else None)
            out = _text.compress(raw, coding, lvl)
            self._add(
                texts_compressed=1,
                text_bytes_in=len(raw),
                text_bytes_out=len(out),
                text_ms=_images.elapsed_ms(start),
            )
            return out, coding

        return self._guard(run)

    @overload
    def decompress_text(
        self, data: bytes, algorithm: str = ..., *, encoding: str = ..., max_output: int = ...
    ) -> str: ...

    @overload
    def decompress_text(
        self, data: bytes, algorithm: str = ..., *, encoding: None, max_output: int = ...
    ) -> bytes: ...

    def decompress_text(
        self,
        data: bytes,
        algorithm: str = "br",
        *,
        encoding: str | None = "utf-8",
        max_output: int = _text.DEFAULT_MAX_OUTPUT,
    ) -> str | bytes:
        """Decompress ``br``/``gzip``/``deflate``/``identity`` data.

        Args:
            data: the compressed bytes.
            algorithm: the coding they were compressed with.
            encoding: decode the output with it (None: return bytes).
            max_output: refuse output above this many bytes (default 256 MiB).

        Returns:
            The text, or bytes when ``encoding`` is None.

        Raises:
            CompressionError: corrupt, truncated or over ``max_output``.
            ConfigError: a bad algorithm or ``max_output``.
            ClosedError: the optimizer was closed.
        """

        def run() -> str | bytes:
            start = time.perf_counter()
            coding = _text.normalize_algorithm(algorithm)
            raw = _text.as_bytes(data)
            limit = positive_int(max_output, "max_output")
            out = _text.decompress(raw, coding, limit)
            self._add(texts_decompressed=1, text_ms=_images.elapsed_ms(start))
            return out if encoding is None else out.decode(encoding)

        return self._guard(run)

    def stream_compressor(
        self, algorithm: str = "deflate", level: int | None = None
    ) -> StreamCompressor:
        """A new :class:`StreamCompressor` for one connection.

        Args:
            algorithm: ``"deflate"`` (permessage-deflate) or ``"br"``.
            level: the compression level (default: the algorithm's).

        Returns:
            The compressor; close it with the connection.

        Raises:
            ConfigError: a bad algorithm or level.
            ClosedError: the optimizer was closed.
        """
        self._check_open()
        return StreamCompressor(algorithm, level)

    def stream_decompressor(self, algorithm: str = "deflate") -> StreamDecompressor:
        """A new :class:`StreamDecompressor` for one connection.

        Args:
            algorithm: ``"deflate"`` or ``"br"``.

        Returns:
            The decompressor; close it with the connection.

        Raises:
            ConfigError: a bad algorithm.
            ClosedError: the optimizer was closed.
        """
        self._check_open()
        return StreamDecompressor(algorithm)

    # -- async variants (anyio worker threads) --------------------------------------------------

    def _limiter(self) -> anyio.CapacityLimiter:
        # A limiter belongs to one event loop; the optimizer may be used from several.
        try:
            loop: Any = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend (trio): one limiter is enough
            loop = anyio
        with self._lock:
            limiter = self._limiters.get(loop)
            if limiter is None:
                limiter = anyio.CapacityLimiter(self.max_workers)
                self._limiters[loop] = limiter
            return limiter

    async def _in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._check_open()
        return await anyio.to_thread.run_sync(
            functools.partial(func, *args, **kwargs), limiter=self._limiter()
        )

    async def optimize_screenshot_async(
        self, data: bytes, target_size_kb: float | None = None, format: str = "JPEG"
    ) -> bytes:
        """:meth:`optimize_screenshot` in a worker thread."""
        return await self._in_thread(self.optimize_screenshot, data, target_size_kb, format)

    async def optimize_screenshot_info_async(
        self,
        data: bytes,
        target_size_kb: float | None = None,
        format: str = "JPEG",
        *,
        quality: int | None = None,
        min_quality: int | None = None,
    ) -> ScreenshotResult:
        """:meth:`optimize_screenshot_info` in a worker thread."""
        return await self._in_thread(
            self.optimize_screenshot_info,
            data,
            target_size_kb,
            format,
            quality=quality,
            min_quality=min_quality,
        )

    async def compress_image_async(
        self,
        data: bytes,
        format: str = "JPEG",
        quality: int | None = None,
        *,
        max_width: int | None = None,
        max_height: int | None = None,
    ) -> bytes:
        """:meth:`compress_image` in a worker thread."""
        return await self._in_thread(
            self.compress_image, data, format, quality, max_width=max_width, max_height=max_height
        )

    async def compress_text_async(
        self,
        data: str | bytes,
        algorithm: str = "br",
        level: int | None = None,
        accept_encoding: str | None = None,
    ) -> bytes:
        """:meth:`compress_text` in a worker thread (worth it for large bodies)."""
        return await self._in_thread(self.compress_text, data, algorithm, level, accept_encoding)

    async def compress_response_async(
        self,
        data: str | bytes,
        accept_encoding: str | None,
        *,
        algorithm: str = "br",
        level: int | None = None,
    ) -> tuple[bytes, str]:
        """:meth:`compress_response` in a worker thread."""
        return await self._in_thread(
            self.compress_response, data, accept_encoding, algorithm=algorithm, level=level
        )

    async def decompress_text_async(
        self,
        data: bytes,
        algorithm: str = "br",
        *,
        encoding: str | None = "utf-8",
        max_output: int = _text.DEFAULT_MAX_OUTPUT,
    ) -> str | bytes:
        """:meth:`decompress_text` in a worker thread."""
        func: Callable[..., str | bytes] = self.decompress_text
        return await self._in_thread(
            func, data, algorithm, encoding=encoding, max_output=max_output
        )


_default: ResourceOptimizer | None = None
_default_lock = threading.Lock()


def get_resource_optimizer() -> ResourceOptimizer:
    """The process-wide default :class:`ResourceOptimizer`, built from the environment.

    A closed default is replaced by a new one on the next call.

    Returns:
        The shared optimizer.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = ResourceOptimizer()
        return _default
