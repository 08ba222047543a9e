"""Texts to a text bundle's named inputs with the tokenizer it carries (torch-free).

A text bundle carries its ``tokenizer.json`` (Hugging Face ``tokenizers``, the ``text``
extra: ``pip install 'ranet-edge[text]'``) as an asset, sha256-checked with the graphs;
nothing is downloaded at run time. :class:`Tokenizer` pads a batch to its longest text (the
mask marks the padding) and truncates to ``max_length``, then hands the arrays the bundle
declares: ``input_ids``, ``attention_mask`` and ``token_type_ids``, each in its declared
dtype.

>>> tok = Tokenizer.from_bundle(chain)
>>> result = chain.predict(tok(["a fine day", "rain again"]))
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ranet_edge.errors import BundleError, InputError, require

from .tensors import InputInfo

__all__ = ["TOKENIZER", "Tokenizer"]

TOKENIZER = "tokenizer.json"
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class Tokenizer:
    """A ``tokenizer.json`` producing the inputs ``inputs`` declares (see the module doc).

    Raises:
        MissingExtraError: ``tokenizers`` is not installed (the ``text`` extra).
        BundleError: the file cannot be read as a tokenizer, or an input is none of
            ``input_ids``, ``attention_mask``, ``token_type_ids``.
    """

    def __init__(self, path: str | Path, inputs: Sequence[InputInfo], max_length: int | None = None):
        tokenizers = require("tokenizers", "text")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the library's own error names what is wrong with the file
            raise BundleError(f"{path} is not a tokenizers file ({str(exc)[:120]}); re-export the bundle") from exc
        unknown = [i.name for i in inputs if i.name not in _FIELDS]
        if unknown:
            raise BundleError(f"the bundle takes {unknown}, which a tokenizer does not make; build those inputs "
                              "yourself and pass them to predict")
        self.inputs = list(inputs)
        fixed = {i.shape[1] for i in inputs if len(i.shape) > 1 and i.shape[1] is not None}
        #: Longest sequence made: the bundle's fixed sequence length, else ``max_length`` (None: no limit).
        self.max_length = min(fixed) if fixed else max_length
        self._tok.enable_padding(pad_id=self._tok.token_to_id("[PAD]") or 0,
                                 length=min(fixed) if fixed else None)  # a fixed axis: always that long
        if self.max_length:
            self._tok.enable_truncation(self.max_length)

    @classmethod
    def from_bundle(cls, chain: Any, max_length: int | None = None, name: str = TOKENIZER) -> Tokenizer:
        """The tokenizer a loaded chain's bundle carries (``chain.manifest``), or that of a
        :class:`~ranet_edge.runtime.manifest.Manifest`.

        Raises:
            BundleError: the bundle carries no ``name`` asset; as :class:`Tokenizer`.
            MissingExtraError: ``tokenizers`` is not installed.
        """
        manifest = getattr(chain, "manifest", chain)
        if name not in manifest.data.get("assets", {}):
            raise BundleError(f"{manifest.root} carries no {name}; export it with assets={{{name!r}: path}}")
        return cls(Path(manifest.root) / name, manifest.inputs, max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """One batch: every declared input, (N, L) arrays padded to the longest text.

        Raises:
            InputError: ``texts`` is empty or holds something other than strings.
        """
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("give a non-empty list of strings to tokenize")
        encodings = self._tok.encode_batch(list(texts))
        return {i.name: np.asarray([getattr(e, _FIELDS[i.name]) for e in encodings], dtype=np.dtype(i.dtype))
                for i in self.inputs}
