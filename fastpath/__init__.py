"""Wire codecs for the inference hot path: the Cython extension, or its pure-Python twin.

Both expose the same four functions (``peek_infer_request``, ``decode_infer_request``,
``encode_infer_response``, ``encode_stream_response``) over the plain objects of ``tensorwire.proto.messages``.
``load_codec("auto")`` takes the extension when it is built and the twin otherwise;
``TENSORWIRE_FASTPATH=twin`` (or ``tensorwire serve --fastpath twin``) forces the twin.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

CODEC_ENV = "TENSORWIRE_FASTPATH"
CODEC_CHOICES = ("auto", "ext", "twin")


@dataclass(frozen=True)
class Codec:
    name: str  # "ext" or "twin"
    peek_infer_request: Callable  # bytes -> (model_name, model_version), tensors untouched
    decode_infer_request: Callable  # (bytes, check=None) -> InferRequest
    encode_infer_response: Callable
    encode_stream_response: Callable


def _codec_of(module: ModuleType, name: str) -> Codec:
    return Codec(
        name=name,
        peek_infer_request=module.peek_infer_request,
        decode_infer_request=module.decode_infer_request,
        encode_infer_response=module.encode_infer_response,
        encode_stream_response=module.encode_stream_response,
    )


def load_codec(choice: str | None = None) -> Codec:
    """The codec for ``choice`` ("auto", "ext", "twin"); None reads TENSORWIRE_FASTPATH, default auto."""
    choice = (choice or os.environ.get(CODEC_ENV) or "auto").lower()
    if choice not in CODEC_CHOICES:
        raise ValueError(f"fastpath choice must be one of {CODEC_CHOICES}, got {choice!r}")
    if choice in ("auto", "ext"):
        try:
            from tensorwire.fastpath import _wire
        except ImportError as exc:
            if choice == "ext":
                raise ImportError(
                    "the fastpath extension tensorwire.fastpath._wire is not built; reinstall with "
                    "`pip install .` (needs a C compiler) or choose --fastpath twin"
                ) from exc
        else:
            return _codec_of(_wire, "ext")
    from tensorwire.fastpath import twin

    return _codec_of(twin, "twin")
