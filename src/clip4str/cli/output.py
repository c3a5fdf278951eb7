"""Lines of command output that always parse, whatever the file names and predicted characters hold.

TSV fields are escaped as in the "linear TSV" convention: ``\\\\`` for a backslash, ``\\t``, ``\\n``,
``\\r``; a file-name byte that is not UTF-8 is written ``\\xNN``, and a character the output stream cannot
encode ``\\uXXXX`` (or ``\\UXXXXXXXX``). :func:`parse_tsv_field` reverses it, so nothing is lost.

JSON lines are valid UTF-8 JSON: a non-UTF-8 byte of a file name (held by Python as a lone surrogate) is
written as its ``\\udcNN`` escape, which ``json.loads`` turns back into the same string (and
``os.fsencode`` into the same bytes); characters ``str.splitlines`` breaks at are escaped too. On a stream
that is not UTF-8, JSON is written in ASCII.

TSV fields also escape those line-breaking characters (``\\u2028`` ...), so splitting the output into lines
never cuts a record.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from clip4str.files import OutputGuard

__all__ = ["json_line", "parse_tsv_field", "tsv_field", "tsv_line"]

_SIMPLE = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_LINE_BREAKS = set("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() also splits at
_JSON_ESCAPED = re.compile("[\ud800-\udfff\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ESCAPE = re.compile(r"\\(\\|t|n|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def _encoding(stream: TextIO | None) -> str:
    stream = sys.stdout if stream is None else stream
    name = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _can_encode(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def tsv_field(text: str, stream: TextIO | None = None) -> str:
    """One TSV field, escaped so that it holds no tab or line break and encodes on ``stream``."""
    encoding = _encoding(stream)
    out = []
    for char in text:
        simple = _SIMPLE.get(char)
        if simple is not None:
            out.append(simple)
        elif "\udc80" <= char <= "\udcff":  # a byte of a non-UTF-8 file name (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char in _LINE_BREAKS or "\ud800" <= char <= "\udfff" or not _can_encode(char, encoding):
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def tsv_line(*fields: Any, stream: TextIO | None = None) -> str:
    """Fields (``str()`` of each) escaped with :func:`tsv_field`, joined by tabs (no line end)."""
    return "\t".join(tsv_field(str(f), stream) for f in fields)


def parse_tsv_field(field: str) -> str:
    """Inverse of :func:`tsv_field` (``\\xNN`` bytes come back as surrogate escapes, as ``os.fsdecode`` gives)."""

    def undo(m: re.Match[str]) -> str:
        code = m.group(1)
        if code in ("\\", "t", "n", "r"):
            return {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[code]
        if code[0] == "x":
            return chr(0xDC00 + int(code[1:], 16))
        return chr(int(code[1:], 16))

    return _ESCAPE.sub(undo, field)


def json_line(obj: Any, stream: TextIO | None = None) -> str:
    """``obj`` as one line of JSON that is valid UTF-8 (ASCII when ``stream`` is not UTF-8)."""
    if _encoding(stream) not in ("utf-8", "utf-16", "utf-32"):
        return json.dumps(obj, ensure_ascii=True)
    text = json.dumps(obj, ensure_ascii=False)
    return _JSON_ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_report(text: str, out: str | None, fmt: str, prog: str, guard: OutputGuard | None = None) -> None:
    """A report to the ``out`` file through the output guard (saying so on stderr), or to stdout."""
    if out:
        from clip4str.files import OutputGuard

        (guard or OutputGuard(prog)).write_text(out, text, "--out")
        print(f"{prog}: wrote the {fmt} report to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
