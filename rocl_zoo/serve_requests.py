"""What the inference server accepts (`rocl_zoo.serve`): requests read, bounded and refused before they reach a batch.

`RequestGate` (ASGI middleware of the HTTP process) caps the bytes and turns a multipart upload into the JSON form;
`parse_request` (in the inference worker) reads that form into images, the output asked for and top-k. Every
refusal is a `BadRequest` with its HTTP status: 400 a malformed body or field, 413 too many bytes, pixels or
images, 422 bytes that are not an image.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

import torch

OUTPUTS = ("topk", "logits", "features")
FIELDS = ("image", "images", "output", "topk")
DEFAULT_TOPK = 5  # as rocl_zoo.predict
DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read (and dropped) so that simple clients see the 413


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Job:
    """One decoded request: its images as the model's input batch, and what to answer."""
    x: torch.Tensor
    output: str
    topk: int
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ requests


def _image_bytes(value, i: int) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(400, f"image {i + 1}: expected a base64 string, got {type(value).__name__}.")
    if value.startswith("data:"):  # a data URL, as browsers' FileReader gives
        value = value.partition(",")[2]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(400, f"image {i + 1} is not valid base64 ({e}).") from None


def read_image(data: bytes, i: int, max_pixels: int):
    """Encoded image bytes to a PIL image; 413 above max_pixels (checked on the header, before decoding), 422 for
    bytes PIL cannot read."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise BadRequest(413, f"image {i + 1} has {img.width}x{img.height} pixels, more than the server's "
                                  f"limit of {max_pixels:,}; send a smaller image.")
        img.load()
    except Image.DecompressionBombError as e:
        raise BadRequest(413, f"image {i + 1}: {e}") from None
    except Image.UnidentifiedImageError:  # before OSError, its base
        raise BadRequest(422, f"image {i + 1} is not an image of a format PIL reads; send PNG, JPEG, BMP, TIFF "
                              f"or WebP.") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated or corrupt data
        raise BadRequest(422, f"image {i + 1} is not a readable image ({e}); send PNG, JPEG, BMP, TIFF or "
                              f"WebP.") from None
    return img


def parse_topk(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # multipart fields are strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(400, f"topk must be a positive integer, got {value!r}.")
    return value


def parse_request(payload, *, max_images: int, max_pixels: int, has_head: bool) -> tuple[list, str, int]:
    """A request body (parsed JSON) to (PIL images, output, topk); BadRequest says what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest(400, f"the body must be a JSON object with {' or '.join(map(repr, FIELDS[:2]))}, got "
                              f"{type(payload).__name__}.")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise BadRequest(400, f"unknown field(s) {unknown}; the fields are {list(FIELDS)}.")
    if ("image" in payload) == ("images" in payload):
        raise BadRequest(400, 'give one image as "image" (base64, or a multipart file) or a list as "images".')
    images = [payload["image"]] if "image" in payload else payload["images"]
    if not isinstance(images, list) or not images:
        raise BadRequest(400, '"images" must be a non-empty list of base64 strings.')
    if len(images) > max_images:
        raise BadRequest(413, f"{len(images)} images in one request, more than the server's limit of {max_images}; "
                              f"split them into several requests.")
    output = payload.get("output", "topk")
    if output not in OUTPUTS:
        raise BadRequest(400, f"output must be one of {list(OUTPUTS)}, got {output!r}.")
    if output != "features" and not has_head:
        raise BadRequest(400, "this model has no classifier head; ask for output=features.")
    topk = parse_topk(payload.get("topk", DEFAULT_TOPK))
    return [read_image(_image_bytes(v, i), i, max_pixels) for i, v in enumerate(images)], output, topk


class RequestGate:
    """ASGI middleware of the HTTP process, in front of POST /predict: caps the body's bytes (413), rejects a body
    that is neither JSON nor multipart (400), and rewrites a multipart upload as the JSON form, so the inference
    worker gets one picklable shape and a malformed body never reaches a batch."""

    def __init__(self, app, *, path: str = "/predict", max_bytes: int, max_images: int):
        self.app, self.path, self.max_bytes, self.max_images = app, path, max_bytes, max_images

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await self._read(scope, receive)
            body = await self._as_json(scope, body)
        except BadRequest as e:
            return await _reply(send, e.status, e.message)
        except ConnectionError:  # the client left mid-upload
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(dict(scope, headers=headers), replay, send)

    async def _read(self, scope, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError
            size += len(message.get("body", b""))
            if size <= self.max_bytes:
                chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
            if size > DRAIN_LIMIT:
                break
        if size > self.max_bytes:
            raise BadRequest(413, f"the request has more than {self.max_bytes:,} bytes, the server's limit; send "
                                  f"smaller images or fewer at once.")
        return b"".join(chunks)

    async def _as_json(self, scope, body: bytes) -> bytes:
        from starlette.datastructures import Headers

        if not Headers(scope=scope).get("content-type", "").startswith("multipart/form-data"):
            try:
                json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadRequest(400, f"the body is not valid JSON ({e}); send JSON (Content-Type: "
                                      f"application/json) or a multipart file upload (curl -F image=@file.png).")
            return body
        return json.dumps(await self._form(scope, body)).encode()

    async def _form(self, scope, body: bytes) -> dict:
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
        from starlette.requests import Request

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, receive).form(max_files=self.max_images + 1, max_fields=len(FIELDS) + 8)
        except HTTPException as e:
            raise BadRequest(400, f"unreadable multipart body: {e.detail}") from None
        except Exception as e:  # python-multipart's parse errors
            raise BadRequest(400, f"unreadable multipart body: {e}") from None
        payload = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                value = base64.b64encode(await value.read()).decode()
            if key in ("image", "images"):
                payload.setdefault("images", []).append(value)
            else:
                payload[key] = value
        return payload


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
