"""clip4str: CLIP4STR scene text recognition.

Public API: :func:`load`, :class:`Recognizer`, :class:`Prediction`, :func:`clip_tokenize`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "Recognizer", "Prediction", "clip_tokenize", "__version__"]

if TYPE_CHECKING:
    from clip4str.api import Prediction, Recognizer, load
    from clip4str.clip.tokenizer import clip_tokenize


def __getattr__(name: str) -> Any:
    # Lazy so that ``import clip4str`` stays cheap and the CLI starts fast.
    if name in ("load", "Recognizer", "Prediction"):
        from clip4str import api

        return getattr(api, name)
    if name == "clip_tokenize":
        from clip4str.clip.tokenizer import clip_tokenize

        return clip_tokenize
    raise AttributeError(f"module 'clip4str' has no attribute {name!r}")
