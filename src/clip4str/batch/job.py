"""A batch job's output folder: the plan, the shards, the row schema, and resuming. No Ray here.

The items are cut into *chunks* (``chunk`` consecutive items: one forward pass of ``--batch-size`` crops,
or one group of photos with ``--detect``), and the chunks into *shards* of ``shard_size`` items, a
multiple of ``chunk``. Shard ``k`` holds the rows of items ``[k * shard_size, (k + 1) * shard_size)``,
sorted by ``index``, in ``part-0000k.parquet`` (or ``.jsonl``), written atomically through the output
guard once all its rows are in. ``_clip4str_batch.json`` records the plan; a job started again with the
same ``--out`` checks that plan and skips the shards already there, so the rows are exactly those of one
uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip4str.errors import OutputError

if TYPE_CHECKING:
    import pyarrow as pa

    from clip4str.files import OutputGuard

__all__ = ["FORMATS", "PLAN_NAME", "JobFolder", "Plan", "row_schema", "rows_table", "shard_name"]

PLAN_NAME = "_clip4str_batch.json"
PLAN_VERSION = 1
FORMATS = {"parquet": "parquet", "jsonl": "jsonl"}  # --format → file suffix
_SHARD = re.compile(r"^part-(\d{5,})\.(parquet|jsonl)$")
# atomic_write's temporaries: ".<name>.<random>.tmp", the target's suffix possibly repeated at the end
_TEMP = re.compile(
    r"^\.(part-\d{5,}\.(parquet|jsonl)|" + re.escape(PLAN_NAME) + r")\..+\.tmp(\.(parquet|jsonl|json))?$"
)


@dataclass
class Plan:
    """What a job reads and how: two runs with equal plans produce the same rows."""

    inputs: list[str]
    items: int
    items_sha256: str
    chunk: int
    shard_size: int
    format: str
    detect: bool
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    @property
    def shards(self) -> int:
        return math.ceil(self.items / self.shard_size)

    def shard_items(self, k: int) -> range:
        """The item indices of shard ``k``."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.items))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def shard_name(k: int, fmt: str) -> str:
    return f"part-{k:05d}.{FORMATS[fmt]}"


def shard_size_for(requested: int, chunk: int) -> int:
    """``requested`` rounded up to a multiple of ``chunk`` (a chunk never spans two shards)."""
    if requested < 1:
        raise ValueError(f"--shard-size must be at least 1, got {requested}")
    return math.ceil(requested / chunk) * chunk


class JobFolder:
    """The ``--out`` folder of one job: refuses a folder holding anything else or another job's plan,
    resumes its own, and writes each finished shard through ``guard``."""

    def __init__(self, out: str | Path, plan: Plan, guard: OutputGuard) -> None:
        self.out = Path(out)
        self.plan = plan
        self.guard = guard
        self.finished: set[int] = set()
        self.rows_written = 0
        self.errors_written = 0
        self._pending: dict[int, list[pa.Table]] = {}
        self._counts: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------ opening
    def open(self) -> set[int]:
        """Check the folder (before any slow work), write or check the plan, clear this job's own unfinished
        temporary files; returns the finished shards (to skip)."""
        from clip4str.files import read_text_file

        out = self.guard.claim_folder(self.out, "--out")
        entries = sorted(p.name for p in out.iterdir())
        foreign = [n for n in entries if n != PLAN_NAME and not _SHARD.match(n) and not _TEMP.match(n)]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputError(
                f"--out {out}: holds {foreign[0]!r}{more}, which clip4str batch did not write; give an empty "
                "or new folder (a job's own folder resumes it)"
            )
        plan_path = out / PLAN_NAME
        shards = [n for n in entries if _SHARD.match(n)]
        if plan_path.exists():
            old = json.loads(read_text_file(plan_path, "job plan", OutputError, max_bytes=16 << 20))
            self._check_same(old)
        elif shards:
            raise OutputError(
                f"--out {out}: holds shards ({shards[0]}) but no {PLAN_NAME}; it is not a job this command can "
                "resume; give an empty or new folder"
            )
        else:
            self.guard.write_text(plan_path, self.plan.to_json(), "--out")
        for name in entries:
            if _TEMP.match(name):  # a temporary of this job's own, left by a killed run
                (out / name).unlink(missing_ok=True)
        suffix = FORMATS[self.plan.format]
        for name in shards:
            m = _SHARD.match(name)
            assert m is not None
            k = int(m.group(1))
            if m.group(2) != suffix or k >= self.plan.shards:
                raise OutputError(
                    f"--out {out}: {name} does not belong to this job's plan; give a new folder"
                )
            self.finished.add(k)
        return set(self.finished)

    def _check_same(self, old: dict[str, Any]) -> None:
        new = asdict(self.plan)
        for key in new:
            if old.get(key) != new[key]:
                was, now = old.get(key), new[key]
                if key == "items_sha256":
                    was, now = "another list", "this one (a file added, removed or renamed?)"
                raise OutputError(
                    f"--out {self.out}: holds another job ({key}: {_short(was)} then, {_short(now)} now); "
                    "resume with the same inputs and options, or give a new folder"
                )

    # ------------------------------------------------------------------------------------------ writing
    def add(self, table: pa.Table) -> list[int]:
        """Take rows (any items, any order); write every shard they complete. Returns the shards written."""
        import numpy as np

        index = table.column("index").to_numpy()
        shard_of = index // self.plan.shard_size
        written = []
        for k in np.unique(shard_of).tolist():
            part = table.filter(shard_of == k) if len(np.unique(shard_of)) > 1 else table
            self._pending.setdefault(k, []).append(part)
            self._counts[k] = self._counts.get(k, 0) + part.num_rows
            if self._counts[k] == len(self.plan.shard_items(k)):
                self._write(k)
                written.append(k)
            elif self._counts[k] > len(self.plan.shard_items(k)):
                raise RuntimeError(f"shard {k}: more rows than items (a chunk was read twice)")
        return written

    def _write(self, k: int) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self._pending.pop(k)).sort_by("index")
        del self._counts[k]
        if table.column("index").to_pylist() != list(self.plan.shard_items(k)):
            raise RuntimeError(f"shard {k}: the rows do not match its items")
        path = self.out / shard_name(k, self.plan.format)
        if self.plan.format == "parquet":
            import pyarrow.parquet as pq

            self.guard.write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"), "--out")
        else:
            self.guard.write_text(path, jsonl_text(table), "--out")
        self.finished.add(k)
        self.rows_written += table.num_rows
        self.errors_written += table.num_rows - table.column("error").null_count

    @property
    def unfinished_rows(self) -> int:
        return sum(self._counts.values())


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------ rows
def row_schema() -> pa.Schema:
    """The columns of every shard (see docs/scale.md): one row per input image."""
    import pyarrow as pa

    word = pa.struct(
        [("text", pa.string()), ("confidence", pa.float64()), ("box", pa.list_(pa.list_(pa.float64())))]
    )
    options = pa.struct(
        [
            ("runtime", pa.string()),
            ("device", pa.string()),
            ("mode", pa.string()),
            ("refine_iters", pa.int32()),
            ("visual_only", pa.bool_()),
            ("precision", pa.string()),
            ("charset_test", pa.string()),
            ("batch_size", pa.int32()),
            ("detect", pa.bool_()),
            ("orientation", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("text", pa.string()),
            ("confidence", pa.float64()),
            ("char_probs", pa.list_(pa.float32())),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("words", pa.list_(word)),
            ("error", pa.string()),
            ("model", pa.string()),
            ("options", options),
        ]
    )


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Row dicts → a table of :func:`row_schema` (missing columns are null)."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=row_schema())


def jsonl_text(table: pa.Table) -> str:
    """Rows as JSON lines (valid UTF-8 whatever the paths hold, as ``clip4str read --json``)."""
    from clip4str.cli.output import json_line

    utf8 = io.StringIO()  # an encoding-less stream: json_line writes UTF-8
    return "".join(json_line(row, utf8) + "\n" for row in table.to_pylist())


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """All rows of a job folder's shards, in index order (for tests and small jobs)."""
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for path in sorted(out.glob("part-*")):
        if not _SHARD.match(path.name):
            continue
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(path).to_pylist())
        else:
            rows.extend(json.loads(line) for line in path.read_text("utf-8").splitlines())
    return sorted(rows, key=lambda r: r["index"])
