"""HTTP request bodies -> images, and the one-line errors bad requests get (Ray-free)."""
from __future__ import annotations

import base64
import binascii
import json
import os

import numpy as np

from ranet_edge.runtime.preprocess import PreprocessSpec, fit_image

ACCEPTED = "send image/jpeg or image/png bytes, or application/json with a list of base64-encoded images"


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message naming the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


#: Largest image decoded (pixels). A few KB of PNG can declare a gigapixel image, which the body
#: size limit does not see; OpenCV checks this before it allocates (its own default is 2^30).
#: OpenCV reads the variable when it loads, so it is set on importing this module, which a
#: replica does before anything imports cv2.
MAX_IMAGE_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))


def decode_image(data: bytes) -> np.ndarray | None:
    """JPEG/PNG (or any format OpenCV reads) bytes -> uint8 HxWx3 RGB; None if undecodable.

    Raises:
        RequestError: 413, the image declares more than ``MAX_IMAGE_PIXELS`` pixels.
    """
    import cv2

    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise RequestError(413, f"the image has more than {MAX_IMAGE_PIXELS:,} pixels; send a smaller one") from None
        return None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_images(content_type: str | None, body: bytes, spec: PreprocessSpec, max_images: int) -> np.ndarray:
    """A classify request's body -> uint8 (k, S, S, 3) images fitted to the network input.

    The body is one image file (``image/*``) or a JSON list of base64 strings
    (``application/json``).

    Raises:
        RequestError: 415 for another content type; 400 for an empty body, bad JSON, bad
            base64 or an image that does not decode; 413 for more than ``max_images`` images
            or one with more than ``MAX_IMAGE_PIXELS`` pixels.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not ctype.startswith("image/") and ctype != "application/json":
        raise RequestError(415, f"content type {ctype or '(none)'} is not accepted; {ACCEPTED}")
    if not body:
        raise RequestError(400, f"the request body is empty; {ACCEPTED}")
    if ctype == "application/json":
        try:
            items = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON ({exc}); {ACCEPTED}") from None
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise RequestError(400, "a JSON body must be a non-empty list of base64-encoded image strings")
        if len(items) > max_images:
            raise RequestError(413, f"{len(items)} images in one request, this server takes at most "
                                    f"{max_images} (its max batch); split the request")
        raws = []
        for i, text in enumerate(items):
            try:
                raws.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(400, f"image {i} of the JSON list is not valid base64") from None
    else:
        raws = [body]
    images = []
    for i, raw in enumerate(raws):
        image = decode_image(raw) if raw else None
        if image is None:
            where = f"image {i} of the JSON list" if ctype == "application/json" else "the image"
            raise RequestError(400, f"{where} cannot be decoded: it is corrupt or not a JPEG/PNG file")
        images.append(fit_image(image, spec))
    return np.stack(images)


def error_body(message: str) -> dict:
    """The JSON body of every refusal: ``{"error": message}``, its whitespace folded to one line."""
    return {"error": " ".join(str(message).split())}  # always one line
