"""Label rules (the official ``LmdbDataset`` preprocessing, fixed for non-Latin charsets) and label files.

The official data module (PARSeq ``strhub/data/dataset.py``, used unchanged by CLIP4STR) treats each
label, in this order:

1. whitespace removed (``''.join(label.split())``);
2. ``unicodedata.normalize('NFKD', label).encode('ascii', 'ignore').decode()``: accents are stripped and
   every non-ASCII character is **deleted**;
3. samples longer than ``max_label_length`` (25) are dropped, *before* step 4;
4. ``CharsetAdapter(charset)``: lowercased if the charset has no upper case (uppercased if it has no lower
   case), then characters outside the charset are removed (not the sample!);
5. samples whose label is now empty are dropped.

Step 2 deletes whole labels in Chinese, Vietnamese, etc. Here ``normalize='auto'`` does it only when the
charset is pure ASCII; otherwise labels are NFC-normalised (the form charsets are stored in), and a
character outside the charset is replaced by its NFKC compatibility form when that form is in the
charset (full-width ``Ａ`` → ``A``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from clip4str.charset import CharsetAdapter
from clip4str.errors import DatasetError

NORMALIZE_MODES = ("auto", "nfkd_ascii", "nfc", "nfkc", "none")
UNSUPPORTED_MODES = ("remove", "drop")
DROP_REASONS = ("too_long", "out_of_charset", "empty")


class LabelFilter:
    """Apply the label rules to one label at a time and count what was dropped and why.

    Args:
        charset: training charset (characters the model can predict).
        max_label_length: labels longer than this (after whitespace removal and normalisation) are dropped.
        remove_whitespace: delete every whitespace character (official default True).
        normalize: 'auto' (official NFKD→ASCII for an ASCII charset, NFC otherwise), 'nfkd_ascii', 'nfc',
            'nfkc' or 'none'; ``True``/``False`` mean 'auto'/'none'.
        unsupported: 'remove' (official: delete characters outside the charset, drop the sample only when
            nothing is left) or 'drop' (drop any sample that has a character outside the charset).

    ``counts`` holds ``seen``, ``kept``, the drop reasons ``too_long``, ``out_of_charset`` (only with
    ``unsupported='drop'``) and ``empty``, and ``chars_removed`` (kept samples that lost characters).
    ``unsupported_chars`` counts each character that caused a removal or drop.
    """

    def __init__(
        self,
        charset: str,
        max_label_length: int = 25,
        remove_whitespace: bool = True,
        normalize: str | bool = "auto",
        unsupported: str = "remove",
    ) -> None:
        if not charset:
            raise ValueError("LabelFilter: charset must not be empty")
        if max_label_length < 1:
            raise ValueError(f"LabelFilter: max_label_length must be >= 1, got {max_label_length}")
        if normalize is True:
            normalize = "auto"
        elif normalize is False or normalize is None:
            normalize = "none"
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"LabelFilter: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if unsupported not in UNSUPPORTED_MODES:
            raise ValueError(
                f"LabelFilter: unsupported must be one of {UNSUPPORTED_MODES}, got {unsupported!r}"
            )
        self.charset = charset
        self.max_label_length = max_label_length
        self.remove_whitespace = remove_whitespace
        self.unsupported = unsupported
        if normalize == "auto":
            normalize = "nfkd_ascii" if charset.isascii() else "nfc"
        self.normalize = normalize
        self._charset_set = frozenset(charset)
        self._adapter = CharsetAdapter(charset)
        self._unsupported_re = re.compile(f"[^{re.escape(charset)}]")
        self.counts: Counter[str] = Counter()
        self.unsupported_chars: Counter[str] = Counter()

    def normalize_label(self, label: str) -> str:
        """Whitespace removal and Unicode normalisation only (no length or charset rule)."""
        if self.remove_whitespace:
            label = "".join(label.split())
        if self.normalize == "nfkd_ascii":
            return unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
        if self.normalize == "nfkc":
            return unicodedata.normalize("NFKC", label)
        if self.normalize == "nfc":
            label = unicodedata.normalize("NFC", label)
            if any(c not in self._charset_set for c in label):
                label = "".join(self._compat(c) for c in label)
        return label

    def fold_case(self, label: str) -> str:
        """Case folding as the official CharsetAdapter: lower (upper) case when the charset has one case."""
        if self._adapter.lowercase_only:
            return label.lower()
        if self._adapter.uppercase_only:
            return label.upper()
        return label

    def _compat(self, c: str) -> str:
        if c in self._charset_set:
            return c
        alt = unicodedata.normalize("NFKC", c)
        return alt if alt and all(a in self._charset_set for a in alt) else c

    def __call__(self, label: str) -> str | None:
        """The processed label, or None when the sample must be dropped (the reason is counted)."""
        self.counts["seen"] += 1
        label = self.fold_case(self.normalize_label(label))
        if len(label) > self.max_label_length:  # after folding: 'ß'.upper() is 'SS'
            self.counts["too_long"] += 1
            return None
        bad = self._unsupported_re.findall(label)
        adapted = label
        if bad:
            self.unsupported_chars.update(bad)
            if self.unsupported == "drop":
                self.counts["out_of_charset"] += 1
                return None
            adapted = self._unsupported_re.sub("", label)
        if not adapted:
            self.counts["empty"] += 1
            return None
        if bad:
            self.counts["chars_removed"] += 1
        self.counts["kept"] += 1
        return adapted

    @property
    def dropped(self) -> int:
        return sum(self.counts[r] for r in DROP_REASONS)

    def summary(self) -> str:
        """One line: kept / seen and the drop counts by reason."""
        c = self.counts
        parts = [f"kept {c['kept']:,} of {c['seen']:,}"]
        parts += [f"{r} {c[r]:,}" for r in DROP_REASONS if c[r]]
        if c["chars_removed"]:
            parts.append(f"labels with characters removed {c['chars_removed']:,}")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Label files

_HEADER_PATH_NAMES = {
    "filename",
    "file",
    "file_name",
    "path",
    "image",
    "image_path",
    "img",
    "name",
    "imagepath",
}
_HEADER_LABEL_NAMES = {"label", "text", "transcription", "gt", "word", "labels", "string"}
_ICDAR_LINE = re.compile(r'^(?P<path>[^\t,]+?),\s*"(?P<label>.*)"\s*$')


def _parse_line(line: str) -> tuple[str, str] | None:
    if "\t" in line:
        path, label = line.split("\t")[:2]
        return path.strip(), label
    m = _ICDAR_LINE.match(line)
    if m:  # ICDAR ground truth: word_1.png, "JOINT" (doubled quotes escape a quote)
        return m["path"].strip(), m["label"].replace('""', '"')
    parts = line.strip().split(maxsplit=1)
    if len(parts) == 2:  # gt.txt style: path<space>label (label may contain spaces)
        return parts[0], parts[1]
    return None


def read_label_file(path: str | Path, images_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """Read ``(image_path, label)`` pairs from a label file.

    Accepted lines: ``path<TAB>label[<TAB>extra columns...]`` (extra columns ignored), the
    ``path label`` style of deep-text-recognition-benchmark's gt.txt (a line without a tab is split at its
    first run of spaces; paths with spaces need the tab form), and ICDAR's ``path, "label"``. An optional
    header line (``filename<TAB>label``...) is skipped; blank lines, a UTF-8 BOM and CRLF are tolerated.
    Relative paths are resolved against ``images_dir`` when given (falling back to the label file's folder
    when the image is not there), otherwise against the label file's folder. Labels are returned verbatim:
    apply a :class:`LabelFilter` for the training rules.

    Raises:
        DatasetError: the file is missing, empty, or has a line that fits none of the forms (file:line named).
    """
    from clip4str.files import read_text_file

    path = Path(path)
    root = Path(images_dir) if images_dir is not None else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"images folder not found: {root}")
    text = read_text_file(path, "label file", DatasetError)  # a regular file only: never a FIFO or device
    base = path.resolve().parent
    records: list[tuple[Path, str]] = []
    # split on line feeds only: str.splitlines() would also split inside labels at \x0b, \x1c, \u2028 ...
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        parsed = _parse_line(line)
        if parsed is None:
            raise DatasetError(
                f"{path}:{lineno}: cannot parse {line[:80]!r}; expected 'path<TAB>label' or 'path label'"
            )
        rel, label = parsed
        if not records and _is_header(rel, label):
            continue
        p = Path(rel)
        if not p.is_absolute():
            if root is not None and ((root / p).exists() or not (base / p).exists()):
                p = root / p
            else:
                p = base / p
        records.append((p, label))
    if not records:
        raise DatasetError(f"label file has no samples: {path}")
    return records


def _is_header(first: str, second: str) -> bool:
    return first.strip().lower() in _HEADER_PATH_NAMES and second.strip().lower() in _HEADER_LABEL_NAMES
