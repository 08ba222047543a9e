"""``POST /v1/classify`` for a text bundle: ``{"texts": [...]}`` tokenized on the server.

A named-input bundle that carries a ``tokenizer.json`` (Hugging Face ``tokenizers``, the
``text`` extra; see docs/guides/text.md) takes a JSON body ``{"texts": ["a fine day", ...]}``:
the texts of one request are tokenized together by
:class:`~ranet_edge.runtime.text.Tokenizer` (padded to the longest, the mask marking the
padding, truncated to the server's ``max_length``), exactly as
``Tokenizer.from_bundle(chain)(texts)`` makes them, so the answers are ``ExitChain.predict``'s
on those arrays. A bundle without a tokenizer refuses texts in one line that names the
``/v2`` route, which takes its tensors.
"""
from __future__ import annotations

import json

from ranet_edge.errors import InputError
from ranet_edge.runtime.inputs import NamedBatch

from .api import RequestError
from .engine import ServedModel

FIELD = "texts"


def no_texts(model: ServedModel, model_name: str) -> str | None:
    """Why ``model`` takes no texts on /v1 (None: it does)."""
    if model.tokenizer is not None:
        return None
    tensors = ", ".join(f"{i.name} {i.describe()}" for i in model.chain.inputs)
    why = (f"this server cannot read the bundle's tokenizer.json ({model.tokenizer_missing})"
           if model.tokenizer_missing else "this bundle carries no tokenizer.json")
    return (f"{why}, so /v1/classify takes no texts; send the tensors ({tensors}) to "
            f"POST /v2/models/{model_name}/infer")


def parse_texts(content_type: str | None, body: bytes, model: ServedModel, max_texts: int,
                model_name: str = "ranet-edge") -> NamedBatch:
    """The body ``{"texts": [...]}`` -> the bundle's named inputs, tokenized and checked.

    Raises:
        RequestError: 400 for a bundle without a tokenizer, bad JSON, a body of another form or
            an empty text list, or inputs the bundle refuses; 415 for another content type;
            413 for more than ``max_texts`` texts.
    """
    refused = no_texts(model, model_name)
    if refused:
        raise RequestError(400, refused)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(415, f"content type {ctype or '(none)'} is not accepted; send application/json "
                                f'{{"{FIELD}": ["a text", ...]}}')
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RequestError(400, f'the body is not valid JSON ({str(exc)[:80]}); send {{"{FIELD}": ["a text", ...]}}') \
            from None
    texts = doc.get(FIELD) if isinstance(doc, dict) and set(doc) == {FIELD} else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, f'a text bundle takes a JSON object {{"{FIELD}": [...]}}, a non-empty list of strings')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request, this server takes at most {max_texts} "
                                "(its max batch); split the request")
    try:
        arrays = model.tokenizer(texts)
    except InputError as exc:
        raise RequestError(400, str(exc)) from None
    return model.check_named(arrays)
