"""Released CLIP4STR checkpoints: names → files, downloaded once into the Hugging Face cache.

:func:`resolve_model` turns what a user types (``'clip4str-base'``, a release file name, a path) into a local
file or model directory. Hugging Face files go through :func:`huggingface_hub.hf_hub_download` (its cache,
its offline mode); GitHub and Zenodo files are streamed into ``<HF hub cache>/clip4str/<filename>`` with a
progress bar, checked, and renamed into place atomically. A file a user copies into that folder by hand is
found there for every release, which is what the offline message suggests.

The facts behind :data:`RELEASES` (URLs, backbones, data, reported accuracy, what could not be confirmed)
are in ``docs/models.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from clip4str.errors import ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "RELEASES",
    "Release",
    "cache_root",
    "cached_path",
    "download_command",
    "get_release",
    "is_offline",
    "list_models",
    "resolve_model",
    "resolve_snapshot",
]

HF_REPO = "mzhaoshuai/CLIP4STR"
GITHUB_RELEASE_URL = "https://github.com/VamosC/CLIP4STR/releases/download/1.0.0/"
ZENODO_RECORD_URL = "https://zenodo.org/records/8369439"

# Reported accuracy (%) from the VamosC/CLIP4STR README, in this order. IC13 is the 1,015-image set;
# IC15 has the 1,811 and 2,077 variants. Scored with the official test.py: 36-char charset, case-insensitive.
BENCHMARKS = (
    "IIIT5K",
    "SVT",
    "IC13",
    "IC15-1811",
    "IC15-2077",
    "SVTP",
    "CUTE80",
    "HOST",
    "WOST",
    "COCO",
    "ArT",
    "Uber",
)
BENCHMARK_SIZES = (3000, 647, 1015, 1811, 2077, 645, 288, 2416, 2416, 9825, 35149, 80551)


@dataclass(frozen=True)
class Release:
    """One released checkpoint file and what is known about it.

    ``location`` is the Hugging Face repo id for ``source='huggingface'`` and the download URL otherwise.
    ``sha256`` is set only where the full hash of *this file* is published (Hugging Face LFS metadata);
    ``name_hash`` is the 10 hex digits in the official file name, which is **not** the file's sha256 for the
    files where that could be checked (see docs/models.md), so it is only compared, never enforced.
    ``alias_of`` names the release a friendly name (``clip4str-base``) stands for.
    """

    name: str
    filename: str
    source: str  # 'huggingface' | 'github' | 'zenodo'
    location: str
    preset: str  # architecture preset in clip4str.presets
    backbone: str
    pretrain: str
    train_data: str
    file_format: str  # 'lightning-ckpt' | 'state-dict-pt'
    approx_size: str | None = None
    sha256: str | None = None
    name_hash: str | None = None
    accuracy: tuple[float, ...] = ()
    notes: str = ""
    alias_of: str | None = None
    # Accuracy (%) measured by this package on the real test crops in ../shared (36 characters,
    # case-insensitive): IIIT5K (3,000), SVT (647), IC15 (2,077) and their sample-weighted mean.
    measured: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.source not in ("package", "huggingface", "github", "zenodo"):
            raise ValueError(f"Release {self.name}: unknown source {self.source!r}")
        if self.accuracy and len(self.accuracy) != len(BENCHMARKS):
            raise ValueError(f"Release {self.name}: accuracy needs {len(BENCHMARKS)} values")

    @property
    def url(self) -> str:
        """Direct download URL of the file (the installed folder for a model shipped in the package)."""
        if self.source == "package":
            return str(shipped_model_dir(self.location))
        if self.source == "huggingface":
            return f"https://huggingface.co/{self.location}/resolve/main/{self.filename}"
        return self.location

    @property
    def page_url(self) -> str:
        """Human-readable page that lists the file."""
        if self.source == "huggingface":
            return f"https://huggingface.co/{self.location}/blob/main/{self.filename}"
        if self.source == "zenodo":
            return ZENODO_RECORD_URL
        if self.source == "package":
            return "docs/small-model.md"
        return "https://github.com/VamosC/CLIP4STR/releases/tag/1.0.0"

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other spellings accepted for this release: the file name and its stem."""
        return (self.filename, Path(self.filename).stem)

    def benchmark(self) -> dict[str, float]:
        """Reported accuracy per benchmark (empty when the README gives none)."""
        return dict(zip(BENCHMARKS, self.accuracy))

    def weighted_accuracy(self) -> float | None:
        """Sample-weighted mean of the 12 reported accuracies (the figure used to pick friendly names)."""
        if not self.accuracy:
            return None
        total = sum(BENCHMARK_SIZES)
        return sum(a * n for a, n in zip(self.accuracy, BENCHMARK_SIZES)) / total


def shipped_model_dir(folder: str) -> Path:
    """A model folder installed with the package (``clip4str/weights/<folder>``)."""
    return Path(__file__).with_name("weights") / folder


def _gh(filename: str) -> str:
    return GITHUB_RELEASE_URL + filename


def _zenodo(filename: str) -> str:
    return f"{ZENODO_RECORD_URL}/files/{filename}?download=1"


SMALL_MODEL = Release(
    name="clip4str-small",
    filename="clip4str-small",
    source="package",
    location="clip4str-small",
    preset="small",
    backbone="ViT 6x192, 32x128 input, conv stem, 32x4 strips",
    pretrain="none (from scratch)",
    train_data="240k synthetic + 5.2k real training crops",
    file_format="clip4str-safetensors",
    approx_size="19 MB",
    notes="Shipped inside the package (reads offline, no download). "
    "Trained on a 2-core CPU by `clip4str train --config small`, then `--config small-stage2` (docs/small-model.md); 36 characters.",
    measured=MappingProxyType({"IIIT5K": 67.30, "SVT": 56.57, "IC15": 46.41, "avg": 58.51}),
)

_FILES: tuple[Release, ...] = (
    SMALL_MODEL,
    Release(
        name="clip4str-base16-openai-synth",
        filename="clip4str_base16x16_synth_a5e3386222.ckpt",
        source="github",
        location=_gh("clip4str_base16x16_synth_a5e3386222.ckpt"),
        preset="vit-b16",
        backbone="ViT-B/16",
        pretrain="OpenAI WIT-400M",
        train_data="MJ+ST (synthetic)",
        file_format="lightning-ckpt",
        name_hash="a5e3386222",
        accuracy=(97.70, 95.36, 96.06, 87.47, 84.02, 91.47, 94.44, 80.01, 86.75, 66.69, 72.82, 43.52),
    ),
    Release(
        name="clip4str-base16-openai-real",
        filename="clip4str_base16x16_d70bde1f2d.ckpt",
        source="github",
        location=_gh("clip4str_base16x16_d70bde1f2d.ckpt"),
        preset="vit-b16",
        backbone="ViT-B/16",
        pretrain="OpenAI WIT-400M",
        train_data="Real (3.3M)",
        file_format="lightning-ckpt",
        name_hash="d70bde1f2d",
        accuracy=(99.20, 98.30, 98.23, 91.44, 90.61, 96.90, 99.65, 77.36, 87.87, 80.80, 85.74, 86.70),
        notes="The checkpoint the official README uses in its test.sh/read.sh examples.",
    ),
    Release(
        name="clip4str-large14-openai-synth",
        filename="clip4str_large14x14_synth_3544c362f0.ckpt",
        source="zenodo",
        location=_zenodo("clip4str_large14x14_synth_3544c362f0.ckpt"),
        preset="vit-l14",
        backbone="ViT-L/14",
        pretrain="OpenAI WIT-400M",
        train_data="MJ+ST (synthetic)",
        file_format="lightning-ckpt",
        name_hash="3544c362f0",
        accuracy=(97.57, 95.36, 96.75, 88.02, 84.40, 91.78, 94.44, 81.08, 87.38, 67.45, 73.48, 44.59),
        notes="File name inferred from the README hash and the B/16 naming; not confirmed on Zenodo.",
    ),
    Release(
        name="clip4str-large14-openai-real",
        filename="clip4str_large14x14_f125500adc.ckpt",
        source="zenodo",
        location=_zenodo("clip4str_large14x14_f125500adc.ckpt"),
        preset="vit-l14",
        backbone="ViT-L/14",
        pretrain="OpenAI WIT-400M",
        train_data="Real (3.3M)",
        file_format="lightning-ckpt",
        name_hash="f125500adc",
        accuracy=(99.43, 98.15, 98.52, 91.66, 91.14, 97.36, 98.96, 79.22, 89.07, 81.97, 85.83, 87.36),
        notes="File name seen in third-party code that loads it; the Zenodo listing itself was not seen.",
    ),
    Release(
        name="clip4str-base16-datacomp-rbu",
        filename="clip4str_base_6e9fe947ac.pt",
        source="huggingface",
        location=HF_REPO,
        preset="vit-b16",
        backbone="ViT-B/16",
        pretrain="DataComp-1B (OpenCLIP)",
        train_data="RBU (6.5M)",
        file_format="state-dict-pt",
        approx_size="633 MB",
        sha256="15f9c480e8db69cf8c7436d918dc3867e9055234f2f55f4c2de31cf0cc6b119c",
        name_hash="6e9fe947ac",
        accuracy=(99.5, 98.3, 98.6, 91.4, 91.1, 98.0, 99.0, 79.3, 88.8, 81.3, 85.8, 92.1),
    ),
    Release(
        name="clip4str-large14-datacomp-rbu",
        filename="clip4str_large_3c9d881b88.pt",
        source="huggingface",
        location=HF_REPO,
        preset="vit-l14",
        backbone="ViT-L/14",
        pretrain="DataComp-1B (OpenCLIP)",
        train_data="RBU (6.5M)",
        file_format="state-dict-pt",
        approx_size="1.79 GB",
        name_hash="3c9d881b88",
        accuracy=(99.6, 98.6, 99.0, 91.9, 91.4, 98.1, 99.7, 81.1, 90.6, 82.7, 86.4, 92.2),
    ),
    Release(
        name="clip4str-huge14-laion-rbu",
        filename="clip4str_huge_5eef9f86e2.pt",
        source="huggingface",
        location=HF_REPO,
        preset="vit-h14",
        backbone="ViT-H/14",
        pretrain="LAION-2B (OpenCLIP)",
        train_data="RBU (6.5M)",
        file_format="state-dict-pt",
        approx_size="4.08 GB",
        sha256="c0d3f67d337c70d4b46a418ca296fdbe5b178f6712664872f1a1495eea248e8c",
        name_hash="5eef9f86e2",
        accuracy=(99.7, 98.6, 98.9, 91.6, 91.1, 98.5, 99.7, 80.6, 90.0, 82.5, 86.2, 91.2),
    ),
    Release(
        name="clip4str-huge14-dfn-rbu",
        filename="clip4str_huge_3e942729b1.pt",
        source="huggingface",
        location=HF_REPO,
        preset="vit-h14",
        backbone="ViT-H/14",
        pretrain="DFN-5B (Apple, OpenCLIP format)",
        train_data="RBU (6.5M)",
        file_format="state-dict-pt",
        approx_size="4.08 GB",
        name_hash="3e942729b1",
        accuracy=(99.5, 99.1, 98.9, 91.7, 91.0, 98.0, 99.0, 82.6, 90.9, 83.0, 86.4, 91.7),
    ),
)

# Friendly names → the best release of each size by sample-weighted mean accuracy over the 12 reported
# benchmarks (see docs/models.md for the numbers and the trade-offs).
_FRIENDLY: dict[str, tuple[str, str]] = {
    "clip4str-base": ("clip4str-base16-datacomp-rbu", "Best released B/16 (DataComp-1B, trained on RBU)."),
    "clip4str-large": ("clip4str-large14-datacomp-rbu", "Best released L/14 (DataComp-1B, trained on RBU)."),
    "clip4str-huge": ("clip4str-huge14-dfn-rbu", "Best released H/14 (DFN-5B, trained on RBU)."),
}

RELEASES: dict[str, Release] = {r.name: r for r in _FILES}
for _alias, (_target, _note) in _FRIENDLY.items():
    RELEASES[_alias] = dataclasses.replace(RELEASES[_target], name=_alias, alias_of=_target, notes=_note)
del _alias, _target, _note

DEFAULT_MODEL = "clip4str-small"
"""The default model: the small CPU model shipped inside the package (reads offline); the released
CLIP4STR-B is one option away (``clip4str-base``, downloaded once)."""


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_LOOKUP: dict[str, Release] = {}
for _r in RELEASES.values():
    if _r.alias_of is None:
        for _a in _r.aliases:
            _LOOKUP[_norm(_a)] = _r
for _r in RELEASES.values():
    _LOOKUP[_norm(_r.name)] = _r
del _r, _a


def list_models(include_aliases: bool = True) -> list[Release]:
    """The known models: the shipped one (when its weights are installed), friendly names (if
    ``include_aliases``), then one entry per file."""
    friendly = [RELEASES[n] for n in _FRIENDLY] if include_aliases else []
    shipped = [SMALL_MODEL] if cached_path(SMALL_MODEL) is not None else []
    return [*shipped, *friendly, *_FILES[1:]]


def get_release(name: str) -> Release | None:
    """The release called ``name`` (its name, file name or file stem; case and ``_``/``-`` ignored)."""
    return _LOOKUP.get(_norm(str(name)))


# --------------------------------------------------------------------------------------------------
# Cache location and offline mode, read from the environment at call time (huggingface_hub.constants is
# frozen at import, so tests and users who set HF_HOME later would otherwise be ignored).

_TRUE = {"1", "on", "yes", "true"}


def is_offline(offline: bool | None = None) -> bool:
    """Whether to stay off the network: ``offline`` when given, else whether ``HF_HUB_OFFLINE`` is set to
    1/on/yes/true. Every download decision in the package goes through here."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _local_dir(cache_dir: str | Path | None) -> Path:
    return cache_root(cache_dir) / "clip4str"


def cached_path(release: Release | str, cache_dir: str | Path | None = None) -> Path | None:
    """Where ``release`` already lies in the cache (never downloads), or None."""
    rel = _as_release(release)
    if rel.source == "package":
        folder = shipped_model_dir(rel.location)
        return folder if _is_model_dir(folder) else None
    manual = _local_dir(cache_dir) / rel.filename
    if manual.is_file():
        return manual
    if rel.source == "huggingface":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(rel.location, rel.filename, cache_dir=str(cache_root(cache_dir)))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _as_release(release: Release | str) -> Release:
    if isinstance(release, Release):
        return release
    rel = get_release(release)
    if rel is None:
        raise ModelNotFoundError(_unknown_message(str(release)))
    return rel


# --------------------------------------------------------------------------------------------------
# Resolution


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or "/" in text
        or text.startswith(("~", "."))
        or Path(text).suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json")
    )


def _unknown_message(name: str) -> str:
    names = [r.name for r in list_models()]
    candidates = names + [a for r in _FILES for a in r.aliases]
    close = difflib.get_close_matches(_norm(name), [_norm(c) for c in candidates], n=3, cutoff=0.6)
    # Map normalised matches back to their display spelling.
    display = {_norm(c): c for c in candidates}
    hint = f" Did you mean {', '.join(repr(display[c]) for c in dict.fromkeys(close))}?" if close else ""
    return (
        f"unknown model {name!r}: not an existing file or directory, nor a released model name.{hint} "
        f"Known names: {', '.join(names)} (or any release file name, e.g. {_FILES[2].filename!r}). "
        "Run `clip4str models` to list them, or pass the path of a .ckpt/.pt checkpoint or of a model "
        "directory holding config.json and model.safetensors."
    )


def _offline_message(rel: Release, dest: Path, reason: str) -> str:
    where = f"{rel.url}" if rel.source != "zenodo" else f"{rel.url} (record page: {rel.page_url})"
    size = f" ({rel.approx_size})" if rel.approx_size else ""
    return (
        f"model {rel.name!r} needs the file {rel.filename}{size}, which is not in the cache "
        f"and cannot be downloaded now ({reason}). Download it from {where} on a machine with internet, "
        f"then either put it at {dest} (it is found there automatically) or pass its path: "
        f"`clip4str read --model /path/to/{rel.filename} IMAGES` or "
        f"`clip4str.load('/path/to/{rel.filename}')`."
    )


def resolve_model(
    name_or_path: str | Path,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """Local path of a model given by path or release name, downloading the release once if needed.

    * An existing file is returned as is; an existing directory must hold ``config.json`` and
      ``model.safetensors`` (the package's own format).
    * A release name (see :func:`list_models`, also the file name or stem) is looked up in the cache
      (``cache_dir`` or the Hugging Face hub cache) and downloaded when missing: Hugging Face files with
      ``huggingface_hub``, GitHub/Zenodo files into ``<cache>/clip4str/``.
    * ``offline=None`` follows ``HF_HUB_OFFLINE``. Offline without a cached file, or when the download
      fails, :class:`~clip4str.errors.ModelNotFoundError` says what to download, from where, where to put
      it and how to pass a path instead.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_model_dir(path):
            return path
        raise ModelNotFoundError(
            f"directory {path} is not a clip4str model: expected config.json and model.safetensors in it "
            "(pass a .ckpt/.pt file, or a directory written by clip4str.checkpoints.save_model)"
        )
    if path.is_file():
        return path
    rel = get_release(text)
    if rel is None:
        if _looks_like_path(text):
            known = get_release(path.name)
            hint = (
                f"; to download that release instead, pass its name {known.name!r}"
                if known is not None
                else f", or use a released name such as {DEFAULT_MODEL!r} (`clip4str models` lists them)"
            )
            raise ModelNotFoundError(f"model file not found: {path} (check the path{hint})")
        raise ModelNotFoundError(_unknown_message(text))
    offline = is_offline(offline)
    found = cached_path(rel, cache_dir)
    if found is not None:
        _check_hf_blob(rel, found)
        return found
    if rel.source == "package":
        raise ModelNotFoundError(
            f"model {rel.name!r} is not installed: its files are not at {shipped_model_dir(rel.location)} "
            "(an installation without its package data: reinstall clip4str, or train it with `clip4str train "
            "--config small-long` (docs/small-model.md) and pass the run's best/ folder with --model), or use a "
            "released model such as 'clip4str-base'"
        )
    dest = _local_dir(cache_dir) / rel.filename
    if offline:
        raise ModelNotFoundError(
            _offline_message(rel, dest, "offline mode: HF_HUB_OFFLINE=1" if is_offline() else "offline=True")
        )
    host = _download_host(rel)
    why = _unreachable(host)
    if why is not None:  # at once, not after the hub's retries (half a minute of silence)
        raise ModelNotFoundError(_offline_message(rel, dest, why))
    if progress:
        size = f", {rel.approx_size}" if rel.approx_size else ""
        print(
            f"clip4str: downloading model {rel.name!r} ({rel.filename}{size}) from {host}, once, into "
            f"{cache_root(cache_dir)}",
            file=sys.stderr,
            flush=True,
        )
    try:
        if rel.source == "huggingface":
            out = _download_hf(rel, cache_dir, progress)
            _check_hf_blob(rel, out)
            return out
        return _download_url(rel, dest, progress)
    except ModelNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the network or the server means "cannot download"
        reason = f"download failed: {type(err).__name__}: {err}".rstrip(": ")
        raise ModelNotFoundError(_offline_message(rel, dest, reason)) from err


# --------------------------------------------------------------------------------------------------
# Downloads


def _download_host(rel: Release) -> str:
    url = rel.url
    if rel.source == "huggingface" and os.environ.get("HF_ENDPOINT"):
        url = os.environ["HF_ENDPOINT"]
    return urllib.parse.urlsplit(url).hostname or url


def _unreachable(host: str, timeout: float = 3.0) -> str | None:
    """Why ``host`` (or the HTTPS proxy, when one is set) cannot be reached now; None when a TCP connection
    opens. A quick check before a download, so an offline machine gets its message at once."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        name, port, what = parts.hostname, parts.port or 80, f"the HTTPS proxy {parts.hostname}"
    else:
        name, port, what = host, 443, host
    if not name:
        return None
    try:
        with socket.create_connection((name, port), timeout=timeout):
            return None
    except OSError as err:
        return f"no network: {what} cannot be reached ({err.strerror or err})"


def download_command(repo: str, filename: str | None = None) -> str:
    """The shell command that downloads ``repo`` (or one file of it) with the installed huggingface_hub:
    ``hf download`` (huggingface_hub >= 1.0, where ``huggingface-cli`` is gone) or ``huggingface-cli download``."""
    try:
        from importlib.metadata import version

        major = int(version("huggingface_hub").split(".")[0])
    except Exception:  # noqa: BLE001 - not installed or an odd version string: name the current tool
        major = 1
    tool = "hf" if major >= 1 else "huggingface-cli"
    return f"{tool} download {repo}" + (f" {filename}" if filename else "")


@functools.cache
def _hf_takes_tqdm_class() -> bool:
    # huggingface_hub >= 0.2x accepts tqdm_class; older versions only have a global switch.
    from huggingface_hub import file_download

    return "tqdm_class" in inspect.signature(file_download.hf_hub_download).parameters


@contextlib.contextmanager
def quiet_hub_retries() -> Iterator[None]:
    """Silence huggingface_hub's per-retry warnings: when a download fails, our own error says what to do."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download_hf(rel: Release, cache_dir: str | Path | None, progress: bool) -> Path:
    import huggingface_hub

    kwargs: dict[str, Any] = {"cache_dir": str(cache_root(cache_dir))}
    if not progress and _hf_takes_tqdm_class():
        from tqdm.auto import tqdm

        class _Silent(tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                kw["disable"] = True
                super().__init__(*args, **kw)

        kwargs["tqdm_class"] = _Silent
    with quiet_hub_retries():
        return Path(huggingface_hub.hf_hub_download(rel.location, rel.filename, **kwargs))


def _check_hf_blob(rel: Release, path: Path) -> None:
    # In the HF cache a snapshot file links to blobs/<sha256> for LFS files: a free integrity check of the
    # published hash. A different hash means the file was replaced upstream, so warn rather than fail.
    if rel.source != "huggingface" or rel.sha256 is None:
        return
    blob = Path(os.path.realpath(path)).name
    if re.fullmatch(r"[0-9a-f]{64}", blob) and blob != rel.sha256:
        warnings.warn(
            f"{path}: Hugging Face reports sha256 {blob} for {rel.filename}, but the release catalogued in "
            f"clip4str has {rel.sha256}; the file was probably replaced upstream.",
            stacklevel=3,
        )


def _open_url(url: str, timeout: float = 30.0) -> Any:
    """Open ``url`` for streaming (a seam the tests replace; they never touch the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "clip4str"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https URLs from the catalogue


def _copy_stream(src: BinaryIO, dst: BinaryIO, total: int | None, label: str, progress: bool) -> str:
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _download_url(rel: Release, dest: Path, progress: bool) -> Path:
    """Stream ``rel.url`` into ``dest`` atomically (:func:`clip4str.weights.atomic_write`), verified first:
    a short, empty or mismatching download leaves nothing behind."""
    from clip4str.weights import atomic_write

    def fetch(tmp: Path) -> None:
        with tmp.open("wb") as out, _open_url(rel.url) as response:
            length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            total = int(length) if length and str(length).isdigit() else None
            sha = _copy_stream(response, out, total, rel.filename, progress)
        size = tmp.stat().st_size
        if total is not None and size != total:
            raise OSError(f"incomplete download of {rel.url}: got {size} of {total} bytes")
        if size == 0:
            raise OSError(f"{rel.url} returned an empty file")
        if rel.sha256 is not None and sha != rel.sha256:
            raise OSError(f"sha256 mismatch for {rel.filename}: expected {rel.sha256}, got {sha}")

    return atomic_write(dest, fetch)


# --------------------------------------------------------------------------------------------------
# Hugging Face repositories of other parts (a multilingual text encoder): snapshots in the hub cache.

# Only these files are fetched from a repository (M-CLIP repos also hold TensorFlow weights).
_SNAPSHOT_CONFIG_FILES = ["*.json", "*.model", "*.txt"]
_SNAPSHOT_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]


def resolve_snapshot(
    name_or_path: str,
    weights: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    what: str = "model",
    fix: str = "give a local folder holding its config.json, tokenizer and weights",
) -> Path:
    """A local folder, or the hub cache's snapshot of repository ``name_or_path`` (downloaded unless offline).

    Only configuration/tokenizer files and, when ``weights``, the PyTorch weights are fetched. ``what`` and
    ``fix`` word the error (what the repository is for, and the alternative to downloading it).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"{what} folder {name_or_path!r} does not exist (or is not a folder)")
    from huggingface_hub import snapshot_download

    local_only = is_offline(offline)
    patterns = _SNAPSHOT_CONFIG_FILES + (_SNAPSHOT_WEIGHT_FILES if weights else [])
    try:
        with quiet_hub_retries():
            return Path(
                snapshot_download(
                    repo_id=name_or_path,
                    revision=revision,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                    local_files_only=local_only,
                    allow_patterns=patterns,
                )
            )
    except Exception as err:  # noqa: BLE001 - hub errors have many types; all mean "not available"
        how = (
            "offline mode (HF_HUB_OFFLINE=1 or offline=True) and it is not in the Hugging Face cache"
            if local_only
            else f"download failed ({type(err).__name__}: {err})"
        )
        raise ModelNotFoundError(
            f"{what} {name_or_path!r} is not available: {how}. Download it once with network access "
            f"(e.g. `{download_command(str(name_or_path))}`), or {fix}"
        ) from err
