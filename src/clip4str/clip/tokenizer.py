"""CLIP's byte-level BPE tokenizer (``clip.tokenize``), written for clip4str.

Text is cleaned (``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed, stripped, lowercased),
split with CLIP's regex (every digit is its own token), mapped byte by byte onto printable unicode, and merged
with the first 48,894 BPE merges of OpenAI's vocabulary. ``<|startoftext|>`` is 49406, ``<|endoftext|>``
49407; :func:`clip_tokenize` returns int32 ids, zero-padded.

Where the vocabulary comes from, first match wins:

1. the ``bpe_path`` argument;
2. the environment variable ``CLIP4STR_BPE_PATH``;
3. the copy shipped inside this package (``clip4str/clip/bpe_simple_vocab_16e6.txt.gz``, OpenAI's file, the
   same one OpenAI's ``clip`` and ``open_clip`` ship), so no model needs a download to read.

Both file formats hold the same merges: OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (gzip or plain text) and
the Hugging Face ``merges.txt`` (a ``vocab.json`` next to it, when present, is checked for consistency). The
format is told from the content, not the file name.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import ftfy
import numpy as np
import regex

if TYPE_CHECKING:
    import torch

__all__ = [
    "ClipTokenizer",
    "clip_tokenize",
    "find_bpe_vocab",
    "get_tokenizer",
    "bytes_to_unicode",
    "SOT_ID",
    "EOT_ID",
    "VOCAB_SIZE",
    "NUM_MERGES",
    "BPE_FILENAME",
]

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894: what CLIP reads after the header line
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_MAX_CACHED_TEXTS = 200_000


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map of the 256 byte values onto printable unicode characters.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the others, in
    increasing order, to ``chr(256 + n)``. The dict's order (printable bytes first, then the others) is the
    order of CLIP's first 256 vocabulary entries.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """CLIP's normalisation: ftfy, html-unescape twice, collapse whitespace, strip, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


# --------------------------------------------------------------------------------------------------
# Finding and reading the vocabulary.


def shipped_bpe_path() -> Path:
    """The vocabulary file installed with this package."""
    return Path(__file__).with_name(BPE_FILENAME)


def find_bpe_vocab(bpe_path: str | os.PathLike[str] | None = None) -> Path:
    """Path to CLIP's BPE vocabulary, searched in the order of the module docstring.

    Raises ``FileNotFoundError`` naming the missing file and how to provide one.
    """
    if bpe_path is not None:
        path = Path(bpe_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP BPE vocabulary {str(path)!r} (the bpe_path argument) does not exist"
            )
        return path
    env = os.environ.get("CLIP4STR_BPE_PATH")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP4STR_BPE_PATH={env!r} does not name an existing file; point it at {BPE_FILENAME} "
                "or a Hugging Face CLIP merges.txt, or unset it"
            )
        return path
    shipped = shipped_bpe_path()
    if not shipped.is_file():
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary is missing from this installation ({shipped}); reinstall clip4str, or set "
            f"CLIP4STR_BPE_PATH to a copy of {BPE_FILENAME} (OpenAI's clip and open_clip ship it) or of a "
            "Hugging Face CLIP merges.txt"
        )
    return shipped


def _read_merges(path: Path) -> list[tuple[str, str]]:
    from clip4str.files import read_regular_file

    raw = read_regular_file(path, 64 << 20, "CLIP BPE vocabulary", FileNotFoundError)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"CLIP BPE vocabulary {str(path)!r} is a damaged gzip file: {err}") from err
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not a CLIP BPE vocabulary (not UTF-8 text or gzip): {err}; expected "
            f"{BPE_FILENAME} or a Hugging Face CLIP merges.txt"
        ) from err
    if "#version" not in lines[0]:
        raise ValueError(
            f"{str(path)!r} is not a CLIP BPE vocabulary: the first line should be a '#version' header, got "
            f"{lines[0][:60]!r}"
        )
    body = lines[1 : NUM_MERGES + 1]
    merges = []
    for number, line in enumerate(body, start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{str(path)!r} line {number}: expected a BPE merge 'a b', got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(
            f"{str(path)!r} holds {len(merges)} BPE merges; CLIP needs {NUM_MERGES} (truncated file?)"
        )
    return merges


class ClipTokenizer:
    """CLIP's BPE tokenizer. ``encode`` gives the raw ids (no SOT/EOT); ``__call__`` the padded int32 batch.

    Results are cached per unique text (captions repeat a lot); the cache is bounded and thread-safe.
    """

    sot_id = SOT_ID
    eot_id = EOT_ID

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None) -> None:
        self.path = find_bpe_vocab(bpe_path)
        merges = _read_merges(self.path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        if len(self.encoder) != VOCAB_SIZE:
            raise ValueError(
                f"{str(self.path)!r} gives {len(self.encoder)} distinct tokens, expected {VOCAB_SIZE}"
            )
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._check_hf_vocab()
        self._word_cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}
        self._text_cache: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def _check_hf_vocab(self) -> None:
        vocab_json = self.path.parent / "vocab.json"
        if self.path.name != "merges.txt" or not vocab_json.is_file():
            return
        from clip4str.files import read_text_file

        try:  # the one regular-file reader (at most 64 MiB)
            hf_vocab = json.loads(read_text_file(vocab_json, "vocab.json", ValueError, "utf-8", 64 << 20))
        except (OSError, ValueError, RecursionError):
            return  # not ours to judge; the merges alone define the ids
        if hf_vocab != self.encoder:
            raise ValueError(
                f"{str(vocab_json)!r} does not match the ids implied by {str(self.path)!r}; "
                "the files come from different tokenizers"
            )

    def __repr__(self) -> str:
        return f"ClipTokenizer(path={str(self.path)!r})"

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> tuple[str, ...]:
        """BPE symbols of one pre-token (already byte-mapped); the last carries the ``</w>`` suffix."""
        cached = self._word_cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: ranks.get(pair, NUM_MERGES))
            if best not in ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = tuple(word)
        self._word_cache[token] = result
        return result

    def _encode_cached(self, text: str) -> tuple[int, ...]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
        cached = self._text_cache.get(text)
        if cached is None:
            ids: list[int] = []
            for piece in _PATTERN.findall(clean_text(text)):
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids.extend(self.encoder[symbol] for symbol in self.bpe(mapped))
            cached = tuple(ids)
            with self._lock:
                if len(self._text_cache) >= _MAX_CACHED_TEXTS:
                    self._text_cache.clear()
                self._text_cache[text] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT (OpenAI's ``SimpleTokenizer.encode``)."""
        return list(self._encode_cached(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (OpenAI's ``SimpleTokenizer.decode``: ``</w>`` becomes a space)."""
        symbols = []
        for i in ids:
            i = int(i)
            if i not in self.decoder:
                raise ValueError(f"token id {i} is outside CLIP's vocabulary (0..{VOCAB_SIZE - 1})")
            symbols.append(self.decoder[i])
        data = bytearray(self.byte_decoder[c] for c in "".join(symbols))
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = True
    ) -> torch.Tensor:
        """texts → int32 ids (N, context_length) as a torch tensor: :meth:`ids`."""
        import torch

        return torch.from_numpy(self.ids(texts, context_length, truncate))

    def ids(self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> np.ndarray:
        """texts → int32 ids (N, context_length): ``[SOT] + encode(text) + [EOT]``, zero-padded (numpy, so
        that the ONNX reader shares it without PyTorch).

        Too long: with ``truncate`` keep the first ``context_length`` ids and make the last one EOT; without,
        raise ``ValueError`` naming the text.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        rows = []
        for text in texts:
            ids = self._encode_cached(text)
            if len(ids) + 2 > context_length:
                if not truncate:
                    raise ValueError(
                        f"text {text!r} is {len(ids) + 2} tokens long with SOT/EOT, more than "
                        f"context_length={context_length}; shorten it or pass truncate=True"
                    )
                rows.append((SOT_ID, *ids[: context_length - 2], EOT_ID))
            else:
                rows.append((SOT_ID, *ids, EOT_ID) + (0,) * (context_length - 2 - len(ids)))
        if not rows:
            return np.zeros((0, context_length), dtype=np.int32)
        return np.array(rows, dtype=np.int32)


_DEFAULT: ClipTokenizer | None = None
_DEFAULT_LOCK = threading.Lock()


def get_tokenizer() -> ClipTokenizer:
    """The process-wide tokenizer with the default vocabulary search (built on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ClipTokenizer()
        return _DEFAULT


def clip_tokenize(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = True
) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: texts → int32 ids (N, context_length), see :meth:`ClipTokenizer.__call__`."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
