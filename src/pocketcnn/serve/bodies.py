"""Reading ``POST /v1/predict`` bodies: size and time limits, content types, multipart forms.

Every problem with a request is an :class:`HTTPProblem` (status code + one-line message),
answered as JSON ``{"error": ...}``; bad input is never a 500. :func:`failure_response` is
the one answer of ``/v1`` and ``/v2`` to a request that failed.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ..errors import ConfigError, PocketCNNError
from ..validate import check_int
from .batching import BatcherClosed

RAW_TYPES = ("application/octet-stream",)  # besides image/*
RAW_NAME = "<body>"  # the "image" of a raw-body request's record


class HTTPProblem(Exception):
    """A request the server answers with ``status`` and JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# what a request handler answers with failure_response; anything else is the app's 500 "internal error"
REQUEST_FAILURES = (HTTPProblem, BatcherClosed, PocketCNNError)


def error_response(status: int, message: str) -> JSONResponse:
    """JSON ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


def failure_response(exc: Exception) -> JSONResponse:
    """The answer to a request that failed with one of :data:`REQUEST_FAILURES`: an
    :class:`HTTPProblem`'s own status, 503 while shutting down, 500 when the model failed to
    run (a :class:`~pocketcnn.errors.PocketCNNError`: not the client's fault)."""
    if isinstance(exc, HTTPProblem):
        return error_response(exc.status, exc.message)
    return error_response(503 if isinstance(exc, BatcherClosed) else 500, str(exc))


@dataclass(frozen=True)
class Upload:
    """One image of a request: its name (file name, form field or ``<body>``) and encoded bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ParsedRequest:
    uploads: tuple[Upload, ...]
    raw: bool  # one raw image body (not a multipart form)
    topk: str | None  # the form field, when the form has one


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_content_length(request: Request, limit: int) -> None:
    """413 from the ``Content-Length`` header alone, before reading anything."""
    value = request.headers.get("content-length")
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise HTTPProblem(400, f"bad Content-Length header: {value[:50]!r}") from None
    if length > limit:
        raise HTTPProblem(413, f"request body of {length:,} bytes is over the limit of {limit:,} bytes")


async def read_body(request: Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body, counting streamed bytes (413 past ``limit``, whatever the headers said)
    and giving the client ``timeout_s`` seconds to send it all (408)."""
    check_content_length(request, limit)
    chunks: list[bytes] = []
    total = 0

    async def receive_all() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPProblem(413, f"request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPProblem(408, f"request body not received within {timeout_s:g} s "
                               f"({total:,} bytes arrived)") from None
    except ClientDisconnect:
        raise HTTPProblem(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body
    yield b""


async def parse_request(request: Request, *, limit: int, timeout_s: float, max_images: int) -> ParsedRequest:
    """The images of a predict request: every file of a multipart form (any field name), or
    one raw ``image/*`` / ``application/octet-stream`` body. 415 for other content types,
    400 for a request without an image or a malformed form, 413, 408 as :func:`read_body`."""
    kind = media_type(request)
    if kind != "multipart/form-data" and not kind.startswith("image/") and kind not in RAW_TYPES:
        check_content_length(request, limit)
        raise HTTPProblem(415, f"unsupported Content-Type {kind or '(none)'!r}: send multipart/form-data with "
                               "image files, or one image as image/* or application/octet-stream")
    body = await read_body(request, limit=limit, timeout_s=timeout_s)
    if kind != "multipart/form-data":
        if not body:
            raise HTTPProblem(400, "empty request body: send an image")
        return ParsedRequest((Upload(RAW_NAME, body),), True, None)
    parser = MultiPartParser(request.headers, _replay(body), max_files=max_images, max_fields=100,
                             max_part_size=1024 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPProblem(400, f"malformed multipart form: {exc.message}") from None
    except Exception as exc:  # the parser's own errors on garbage input
        raise HTTPProblem(400, f"malformed multipart form: {type(exc).__name__}: {str(exc)[:200]}") from None
    uploads: list[Upload] = []
    topk: str | None = None
    try:
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(value.filename or field, await value.read()))
            elif field == "topk":
                topk = value
    finally:
        await form.close()
    if not uploads:
        raise HTTPProblem(400, "no image files in the multipart form: send each image as a file field")
    return ParsedRequest(tuple(uploads), False, topk)


def parse_topk(value: str | None, default: int = 5) -> int:
    """A ``topk`` query parameter or form field -> a positive integer (400 otherwise)."""
    if value is None:
        return default
    try:
        topk = int(value.strip())
    except ValueError:
        raise HTTPProblem(400, f"topk must be a positive integer, received topk={value[:50]!r}") from None
    try:
        return check_int("topk", topk)
    except ConfigError as exc:
        raise HTTPProblem(400, str(exc)) from None
