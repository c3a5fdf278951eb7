"""Typed configuration of a CLIP4STR model, with a strict JSON round trip.

Every checkpoint in the package's own format carries a :class:`ModelConfig` as ``config.json``; official
checkpoints are converted into one on load (sizes from the weights, charset from ``hyper_parameters``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from clip4str.charset import CHARSET_94, resolve_charset
from clip4str.decoding import DecodeOptions  # decoding never imports config: no cycle

T = TypeVar("T")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN_STD = (0.5, 0.5, 0.5)
ADAPTER_KINDS = ("none", "clip-adapter", "ladder")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or inconsistent; the message names it."""


# Sane bounds, checked before anything is allocated (a hostile or mistyped config must not ask for
# terabytes): the largest released towers (ViT-H/14: width 1280, 32 layers) are far inside them.
MAX_WIDTH = 16384
MAX_LAYERS = 512
MAX_IMAGE_SIDE = 4096
MAX_TOKENS = 65536
MAX_LABEL_LENGTH = 512
MAX_PARAMETERS = 20_000_000_000


def check_int(where: str, value: Any, low: int, high: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer in [low, high]."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where} must be in [{low}, {high}], got {value}")


def check_number(where: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in [low, high] (or [low, high))."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if not low <= value <= high or (high_open and value == high):
        raise ConfigError(f"{where} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def parse_json(text: str, source: str = "config") -> Any:
    """``json.loads`` whose failures (syntax, absurd nesting) are one :class:`ConfigError` naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from err
    except RecursionError as err:
        raise ConfigError(f"{source}: JSON nested too deeply") from err


class JsonConfig:
    """JSON round trip of a config dataclass (strict: unknown keys and mistyped values raise)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as indented JSON, also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_dict(cls, data)

    @classmethod
    def from_json(cls: type[T], path_or_text: str | Path) -> T:
        """From a JSON string or a path to a JSON file."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            from clip4str.files import MAX_CONFIG_BYTES, read_text_file

            text = read_text_file(path_or_text, "config file", ConfigError, "utf-8", MAX_CONFIG_BYTES)
        return cls.from_dict(parse_json(text, str(path_or_text)[:200]))  # type: ignore[attr-defined]


@dataclass
class VisionConfig:
    """ViT image tower. Sizes are an int (square) or ``[H, W]`` (e.g. 32x128 images with 4x8 patches, as
    PARSeq uses); the patch grid is ``image_size / patch_size`` per side, plus one class token."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int | tuple[int, int] = 16
    image_size: int | tuple[int, int] = 224
    # Patch embedding: "patch" (CLIP's one strided convolution) or "conv" (3x3 convolutions that halve the
    # resolution step by step down to the patch grid; learns locality from fewer images when training from
    # scratch). Official checkpoints are "patch".
    stem: str = "patch"

    def __post_init__(self) -> None:
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"clip.vision.stem must be 'patch' or 'conv', got {self.stem!r}")
        for name in ("patch_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                value = tuple(value)
                if len(value) != 2:
                    raise ConfigError(f"clip.vision.{name} must be an int or [H, W], got {list(value)}")
                setattr(self, name, value)
        (ih, iw), (ph, pw) = self.image_hw, self.patch_hw
        for name, value in (("image_size", (ih, iw)), ("patch_size", (ph, pw))):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"clip.vision.{name} must be integers, got {list(value)}")
        if min(ph, pw) < 1 or min(ih, iw) < 1:
            raise ConfigError(
                f"clip.vision.image_size {list(self.image_hw)} and patch_size {list(self.patch_hw)} must be >= 1"
            )
        if max(ih, iw) > MAX_IMAGE_SIDE:
            raise ConfigError(
                f"clip.vision.image_size {list(self.image_hw)}: each side must be <= {MAX_IMAGE_SIDE}"
            )
        if ih % ph or iw % pw:
            raise ConfigError(
                f"clip.vision.image_size {list(self.image_hw)} is not a multiple of patch_size "
                f"{list(self.patch_hw)}"
            )
        if self.num_tokens > MAX_TOKENS:
            raise ConfigError(
                f"clip.vision: image_size {list(self.image_hw)} / patch_size {list(self.patch_hw)} gives "
                f"{self.num_tokens} tokens; at most {MAX_TOKENS}"
            )
        _check_tower("clip.vision", self.width, self.layers, self.heads)

    @property
    def image_hw(self) -> tuple[int, int]:
        """Input size (H, W)."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else s

    @property
    def patch_hw(self) -> tuple[int, int]:
        """Patch size (h, w)."""
        s = self.patch_size
        return (s, s) if isinstance(s, int) else s

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        (ih, iw), (ph, pw) = self.image_hw, self.patch_hw
        return ih // ph, iw // pw

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid_hw
        return rows * cols + 1


@dataclass
class TextConfig:
    """Causal text transformer. ``context_length`` is the number of positional embedding rows (77)."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408

    def __post_init__(self) -> None:
        _check_tower("clip.text", self.width, self.layers, self.heads)
        check_int("clip.text.context_length", self.context_length, 1, MAX_TOKENS)
        check_int("clip.text.vocab_size", self.vocab_size, 1, 1 << 24)


def _check_tower(where: str, width: Any, layers: Any, heads: Any) -> None:
    check_int(f"{where}.width", width, 1, MAX_WIDTH)
    check_int(f"{where}.layers", layers, 1, MAX_LAYERS)
    check_int(f"{where}.heads", heads, 1, width)
    if width % heads:
        raise ConfigError(f"{where}.heads={heads} does not divide {where}.width={width}")


@dataclass
class CLIPConfig:
    """Both CLIP towers. The official CLIP4STR uses QuickGELU and ``width // 64`` heads for every backbone."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    activation: str = "quick_gelu"  # "quick_gelu" | "gelu"

    def __post_init__(self) -> None:
        check_int("clip.embed_dim", self.embed_dim, 1, MAX_WIDTH)
        if self.activation not in ("quick_gelu", "gelu"):
            raise ConfigError(f"clip.activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")


@dataclass
class DecoderConfig:
    """PARSeq two-stream decoder (both branches share these sizes; width = ``clip.embed_dim``)."""

    depth: int = 1
    num_heads: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_int("decoder.depth", self.depth, 1, MAX_LAYERS)
        check_int("decoder.num_heads", self.num_heads, 1, MAX_WIDTH)
        check_int("decoder.mlp_ratio", self.mlp_ratio, 1, 64)
        check_number("decoder.dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass
class PreprocessConfig:
    """Resize to ``image_size`` (H, W) ignoring aspect ratio, scale to [0, 1], then ``(x - mean) / std``.

    The official evaluation and ``read.py`` use mean = std = 0.5, while training used CLIP's statistics.
    """

    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = HALF_MEAN_STD
    std: tuple[float, float, float] = HALF_MEAN_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        try:
            self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
            self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
            self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        except (TypeError, ValueError, OverflowError) as err:
            raise ConfigError(
                f"preprocess: image_size, mean and std must be lists of numbers ({err})"
            ) from err
        if len(self.image_size) != 2 or not all(1 <= v <= MAX_IMAGE_SIDE for v in self.image_size):
            raise ConfigError(
                f"preprocess.image_size must be two ints (H, W) in [1, {MAX_IMAGE_SIDE}], got {self.image_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess.mean and preprocess.std must have 3 values")
        for i in range(3):
            check_number(f"preprocess.mean[{i}]", self.mean[i], -1e6, 1e6)
            check_number(f"preprocess.std[{i}]", self.std[i], 1e-12, 1e6)
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ConfigError(
                f"preprocess.interpolation must be bicubic|bilinear|nearest, got {self.interpolation!r}"
            )


@dataclass
class DecodingConfig:
    """Test-time decoding: ``mode`` 'ar' (autoregressive) or 'nar', cloze ``refine_iters``, visual branch only."""

    mode: str = "ar"
    refine_iters: int = 1
    visual_only: bool = False

    def __post_init__(self) -> None:
        try:
            DecodeOptions(mode=self.mode, refine_iters=self.refine_iters, visual_only=self.visual_only)
        except ValueError as err:
            raise ConfigError(f"decoding.{err}") from None


@dataclass
class AdapterConfig:
    """Parameter-efficient tuning of the image features: ``kind`` 'none', 'clip-adapter' or 'ladder'.

    ``ratio`` is the residual mixing ratio of CLIP-Adapter (0.2 in the paper's study), ``reduction`` the
    bottleneck reduction of the adapter / side network; ``options`` holds kind-specific extras.
    """

    kind: str = "none"
    ratio: float = 0.2
    reduction: int = 4
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"adapter.kind must be one of {', '.join(ADAPTER_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"adapter.ratio must be in [0, 1], got {self.ratio}")
        if self.reduction < 1:
            raise ConfigError(f"adapter.reduction must be >= 1, got {self.reduction}")


@dataclass
class ModelConfig(JsonConfig):
    """Everything needed to rebuild a CLIP4STR model and its preprocessing from weights alone."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    charset_train: str = field(default=CHARSET_94, metadata={"charset": True})
    # Characters the prediction is restricted to before it is fed to the text encoder and compared with
    # labels (the official ``charset_test``). None means ``charset_train``.
    charset_test: str | None = field(default=None, metadata={"charset": True})
    max_label_length: int = 25
    caption_length: int = 16  # CLIP context length for the predicted caption (official ``context_length``)
    # Freezing: N > 0 freezes the first N blocks of a tower with its embeddings, -1 the whole tower.
    text_freeze_layers: int = 6
    image_freeze_layers: int = 0
    freeze_token_embeddings: bool = False
    cross_loss_weight: float = 1.0
    # Weight of an extra training term in which every position is read from the image alone (each query sees
    # only [B], as in non-autoregressive decoding). 0 is the official loss; a from-scratch model ties its
    # position queries to the image sooner with it.
    context_free_loss_weight: float = 0.0
    # Weight of an auxiliary CTC loss on the image tokens (a linear ``ctc_head`` over the patch columns, used
    # in training only). 0 (official) has no head; a from-scratch model's tokens become distinct per column
    # with it, so the decoders' cross-attention has something to align to.
    ctc_loss_weight: float = 0.0
    perm_num: int = 6
    perm_forward: bool = True
    perm_mirrored: bool = True
    # Text encoder of the cross-modal branch: "clip" (the CLIP text tower) or another registered encoder,
    # configured by ``text_encoder_options`` (e.g. a Multilingual-CLIP model name or path).
    text_encoder: str = "clip"
    text_encoder_options: dict[str, Any] = field(default_factory=dict)
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig())
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    name: str = ""

    def __post_init__(self) -> None:
        for name in ("charset_train", "charset_test"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name == "charset_test" and value is None):
                raise ConfigError(f"{name} must be a string of characters, got {value!r}"[:200])
        if not self.charset_train:
            raise ConfigError("charset_train must not be empty")
        if self.charset_test is not None and not self.charset_test:
            raise ConfigError("charset_test must not be empty (leave it unset to use charset_train)")
        if len(set(self.charset_train)) != len(self.charset_train):
            raise ConfigError("charset_train has repeated characters")
        check_int("max_label_length", self.max_label_length, 1, MAX_LABEL_LENGTH)
        check_int("caption_length", self.caption_length, 1, MAX_TOKENS)
        check_int("perm_num", self.perm_num, 1, 10_000)
        check_number("cross_loss_weight", self.cross_loss_weight, 0.0, 1e6)
        check_number("context_free_loss_weight", self.context_free_loss_weight, 0.0, 1e6)
        check_number("ctc_loss_weight", self.ctc_loss_weight, 0.0, 1e6)
        if self.clip.embed_dim % self.decoder.num_heads:
            raise ConfigError(
                f"decoder.num_heads={self.decoder.num_heads} does not divide the decoder width "
                f"clip.embed_dim={self.clip.embed_dim}"
            )
        params = self.approx_parameters()
        if params > MAX_PARAMETERS:
            raise ConfigError(
                f"these sizes give a model of about {params / 1e9:.0f} billion parameters "
                f"({params * 4 / 2**30:,.0f} GiB in fp32); check the widths and layer counts"
            )

    def approx_parameters(self) -> int:
        """Rough parameter count from the sizes alone (to refuse absurd configs before allocating)."""
        v, t, d = self.clip.vision, self.clip.text, self.decoder
        ph, pw = v.patch_hw
        e = self.clip.embed_dim
        vision = 12 * v.layers * v.width**2 + (v.num_tokens + 3 * ph * pw) * v.width + v.width * e
        text = 12 * t.layers * t.width**2 + (t.vocab_size + t.context_length) * t.width + t.width * e
        decoder = 2 * d.depth * (8 + 2 * d.mlp_ratio) * e**2 + 2 * (len(self.charset_train) + 3) * e
        return vision + text + decoder

    @property
    def resolved_charset_test(self) -> str:
        return self.charset_train if self.charset_test is None else self.charset_test


# --------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict conversion, strict about unknown keys and types.


def to_dict(obj: Any) -> Any:
    """Nested dataclass → plain JSON-compatible dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {type(value).__name__}")
        return from_dict(hint, value, prefix=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and mistyped values raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``'a.b.c=value'`` into (['a','b','c'], value). Values are JSON when they parse, else strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. decoder.depth=2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override {key!r}: its JSON value is nested too deeply") from None
    return key.split("."), value


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``['a.b=1', ...]`` or a mapping → one mapping of dotted keys (a mapping is returned as a copy)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides must be a list of key=value strings or a mapping, got the string {overrides!r}"
        )
    parsed = {}
    for text in overrides:
        path, value = parse_override(text)
        parsed[".".join(path)] = value
    return parsed


def _section(cls: Any, name: str) -> Any:
    """The dataclass a field of ``cls`` holds: its type, or ``metadata['section']`` for a mapping field that
    holds a partial config (``TrainConfig.model``); None for a plain or free-form field."""
    hint = typing.get_type_hints(cls)[name]
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    return next((f.metadata.get("section") for f in dataclasses.fields(cls) if f.name == name), None)


def _is_charset(cls: Any, name: str) -> bool:
    return any(f.name == name and f.metadata.get("charset") for f in dataclasses.fields(cls))


def _merge_path(cls: Any, node: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    key, rest = path[0], path[1:]
    here = f"{where}.{key}" if where else key
    if cls is None:  # inside a free-form mapping: any key, levels created as needed
        if not rest:
            node[key] = copy.deepcopy(value)
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{here} is a value, not a mapping; cannot set {here}.{'.'.join(rest)}")
        _merge_path(None, child, rest, value, here)
        return
    hints = typing.get_type_hints(cls)
    if key not in hints:
        inside = f" in {where}" if where else ""
        raise ConfigError(f"unknown config key(s): {here}; valid keys{inside}: {', '.join(sorted(hints))}")
    section = _section(cls, key)
    free_form = typing.get_origin(hints[key]) is dict
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)
    if rest or (section is not None and isinstance(value, Mapping)):
        if section is None and not free_form:
            raise ConfigError(f"{here} is a value, not a config section; cannot set {here}.{'.'.join(rest)}")
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        if rest:
            _merge_path(section, child, rest, value, here)
        else:  # a mapping for a config section merges key by key
            for sub_key, sub_value in value.items():
                _merge_path(section, child, [str(sub_key)], sub_value, here)
        return
    if _is_charset(cls, key) and isinstance(value, str) and value:
        try:
            value = resolve_charset(value)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{here}: {err}") from err
    node[key] = copy.deepcopy(value)  # a free-form mapping (e.g. adapter.options) is replaced whole


def merge_into(
    cls: type, data: dict[str, Any], changes: Mapping[str, Any] | Iterable[str], where: str = ""
) -> None:
    """Merge ``changes`` into ``data``, the (possibly partial) ``to_dict`` form of dataclass ``cls``, in place.

    This is the one way configs are combined (presets with variants and overrides, training recipes with
    ``extends`` and ``--set``, overrides at load time). ``changes`` is a mapping or ``'key=value'`` strings
    (values are JSON when they parse). Keys may be dotted (``'decoding.refine_iters'``). A mapping given for a
    config section merges key by key; for a free-form mapping field (``adapter.options``,
    ``text_encoder_options``) it replaces the field whole, while a dotted key reaching inside one sets just
    that key. Charset fields take a charset name ('36', '94', 'vietnamese'), a file or the characters
    (:func:`~clip4str.charset.resolve_charset`). Unknown keys raise :class:`ConfigError` naming the dotted path.
    """
    for key, value in parse_overrides(changes).items():
        _merge_path(cls, data, str(key).split("."), value, where)


def apply_overrides(cfg: T, overrides: Mapping[str, Any] | Iterable[str] | None, where: str = "") -> T:
    """A copy of dataclass ``cfg`` with ``overrides`` merged (:func:`merge_into`) and every value checked."""
    data = to_dict(cfg)
    merge_into(type(cfg), data, overrides or {}, where)
    return from_dict(type(cfg), data, prefix=where)
