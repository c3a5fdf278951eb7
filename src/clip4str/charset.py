"""Charsets, the character tokenizer and the test-time charset adapter.

Token ids follow the official code so released heads load unchanged: ``[E]`` (end of sequence) is id 0,
the charset's characters take ids ``1..len(charset)`` in order, then ``[B]`` (begin) and ``[P]`` (pad).
The heads predict ``len(charset) + 1`` classes (EOS and the characters).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where tensors are made: the ONNX reader imports this module without it
    import torch
    from torch import Tensor

CHARSET_36 = string.digits + string.ascii_lowercase
CHARSET_62 = string.digits + string.ascii_lowercase + string.ascii_uppercase
CHARSET_94 = CHARSET_62 + string.punctuation
# Vietnamese: the 94 ASCII characters plus every precomposed (NFC) Vietnamese letter, both cases.
_VIETNAMESE_LOWER = "àáảãạăằắẳẵặâầấẩẫậèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵđ"
CHARSET_VIETNAMESE = CHARSET_94 + _VIETNAMESE_LOWER + _VIETNAMESE_LOWER.upper()

PRESETS: dict[str, str] = {
    "36": CHARSET_36,
    "36_lowercase": CHARSET_36,
    "62": CHARSET_62,
    "62_mixed-case": CHARSET_62,
    "94": CHARSET_94,
    "94_full": CHARSET_94,
    "vietnamese": CHARSET_VIETNAMESE,
}

EOS, BOS, PAD = "[E]", "[B]", "[P]"


def resolve_charset(spec: str) -> str:
    """A preset name ('36', '62', '94', 'vietnamese'), a path to a UTF-8 text file (``@path`` forces a path),
    or the characters themselves.

    In a file, line breaks are ignored; all other characters, in order, form the charset. The result is
    NFC-normalised and must not repeat a character.
    """
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.startswith("@") or (len(spec) < 4096 and "\n" not in spec and Path(spec).is_file()):
        from clip4str.files import MAX_CONFIG_BYTES, read_text_file

        path = Path(spec.lstrip("@"))  # the one regular-file reader: never a FIFO or device, bounded
        if not path.exists():
            raise FileNotFoundError(f"charset file not found: {path}")
        text = read_text_file(path, "charset file", ValueError, "utf-8", MAX_CONFIG_BYTES)
        text = text.replace("\r", "").replace("\n", "")
        origin = f"charset file {path}"
    else:
        text = spec
        origin = (
            f"charset {spec[:40]!r} is not a preset ({', '.join(sorted(PRESETS))}) or an existing file, and as "
            "a list of characters it"
        )
    text = unicodedata.normalize("NFC", text)
    if not text:
        raise ValueError("charset is empty")
    seen: set[str] = set()
    repeated = sorted({c for c in text if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if repeated:
        raise ValueError(f"{origin} repeats character(s) {''.join(repeated)!r}")
    return text


class CharTokenizer:
    """Maps labels to ``[B] chars [E] [P]...`` id tensors and head outputs back to strings."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.itos: tuple[str, ...] = (EOS, *charset, BOS, PAD)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.eos_id = 0
        self.bos_id = len(charset) + 1
        self.pad_id = len(charset) + 2

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def num_classes(self) -> int:
        """Head outputs: EOS and the characters ([B] and [P] are never predicted)."""
        return len(self.charset) + 1

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Labels → (N, L_max + 2) int64 ``[BOS, ids..., EOS, PAD...]``. Unknown characters raise KeyError."""
        import torch

        rows = []
        for label in labels:
            try:
                ids = [self.stoi[c] for c in label]
            except KeyError as err:
                raise KeyError(f"label {label!r} has character {err.args[0]!r} outside the charset") from None
            rows.append([self.bos_id, *ids, self.eos_id])
        width = max((len(r) for r in rows), default=2)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(device) if device is not None else out

    def ids_to_text(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def decode(self, probs: Tensor) -> tuple[list[str], list[Tensor]]:
        """(N, L, C) probabilities → texts cut at the first EOS, and per-row probabilities of the kept
        characters followed by the EOS probability (when an EOS was predicted).

        Confidence is the product of a row's probabilities, as the official evaluation computes it.
        """
        max_probs, ids = probs.max(-1)
        texts, ends = self.read_ids(ids.cpu().numpy())
        return texts, [row_p[:end] for row_p, end in zip(max_probs, ends)]

    def read_ids(self, ids: np.ndarray) -> tuple[list[str], list[int]]:
        """Greedy ids (N, L) → texts cut at the first EOS, and per row how many probabilities count: the
        kept characters plus the EOS (L when no EOS was predicted). The rule both readers (PyTorch, ONNX)
        apply."""
        texts, ends = [], []
        for row_ids in np.asarray(ids).tolist():
            end = row_ids.index(self.eos_id) if self.eos_id in row_ids else len(row_ids)
            texts.append(self.ids_to_text(row_ids[:end]))
            ends.append(min(end + 1, len(row_ids)))
        return texts, ends

    def decode_caption(self, ids: Tensor | np.ndarray) -> list[str]:
        """Greedy ids (N, L) → caption strings as the official ``decode_fast`` does.

        The official code joins every token's string (specials included) and cuts at the first occurrence
        of the string ``'[E]'``, so three predicted characters ``[``, ``E``, ``]`` also end the caption.
        Released checkpoints were trained with this behaviour, so it is reproduced.
        """
        out = []
        for row in ids.tolist() if hasattr(ids, "tolist") else list(ids):
            text = "".join(self.itos[i] for i in row)
            cut = text.find(EOS)
            out.append(text if cut < 0 else text[:cut])
        return out


class CharsetAdapter:
    """The official test-time adapter: case-fold when the target charset has one case, drop the rest."""

    def __init__(self, target_charset: str) -> None:
        self.target_charset = target_charset
        self.lowercase_only = target_charset == target_charset.lower()
        self.uppercase_only = target_charset == target_charset.upper()
        self._unsupported = re.compile(f"[^{re.escape(target_charset)}]")

    def __call__(self, label: str) -> str:
        if self.lowercase_only:
            label = label.lower()
        elif self.uppercase_only:
            label = label.upper()
        return self._unsupported.sub("", label)
