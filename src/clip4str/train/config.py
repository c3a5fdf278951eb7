"""Typed training configuration, recipe presets and validation that runs before any work starts.

A training config is a JSON file (or a preset shipped in ``clip4str/configs/train/``) read into
:class:`TrainConfig`. A file may start from a preset with ``"extends": "<preset name or path>"`` and
change only what differs. ``--set key=value`` overrides reach every field, nested ones with dots
(``optim.lr=1e-4``, ``data.num_workers=2``, ``model.decoder.dropout=0``).

The model is described by ``model_preset`` (an architecture from :mod:`clip4str.presets`), ``variants``
laid over it (``["ladder"]``, ``["vietnamese"]``: :data:`clip4str.presets.VARIANTS`), then ``model``, a
partial :class:`~clip4str.config.ModelConfig` merged on top; ``init`` says where the weights come from
(random, bare CLIP weights, or a CLIP4STR checkpoint to fine-tune). Files, ``extends`` and overrides are
combined by :func:`clip4str.config.merge_into`, like every other config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from clip4str.config import (
    HALF_MEAN_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ConfigError,
    JsonConfig,
    ModelConfig,
    check_int,
    check_number,
    from_dict,
    merge_into,
    parse_json,
    to_dict,
)

__all__ = [
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_train_config",
    "train_preset_names",
    "resolve_model_config",
    "parse_init",
]

PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true")  # auto: clip4str.precision
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
LR_SCALINGS = ("official", "none")
SCHEDULES = ("onecycle", "wsd")
# The official code scales the base learning rate by (devices x batch x accumulation) / 512.
LR_REFERENCE_BATCH = 512


@dataclass
class SynthDataConfig:
    """Words rendered while training (:class:`clip4str.data.synth.RenderedWords`), beside the LMDBs.

    Each of the ``count`` samples is a function of (``seed``, its index), rendered when the loader reads it:
    a run of N images sees N different words without an LMDB on disk. The charset is the training charset.
    """

    count: int = 0  # 0: none
    vocab: str = ""  # a word-list file (one per line); '' renders random strings only
    fonts: list[str] = field(default_factory=list)  # font folders or files; []: the system's fonts
    seed: int = 0
    random_ratio: float = 0.2
    max_length: int = 25
    # other clip4str.data.synth.SynthConfig fields: effect probabilities (p_curve, p_sign, ...), font_size
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the LMDBs are and how samples are read (the official ``SceneTextDataModule`` options)."""

    train_root: list[str] = field(default_factory=list)
    # Times each train_root is read per epoch (root as written in train_root → count; default 1): mixes a
    # small real set with a large synthetic one without copying it.
    train_repeat: dict[str, int] = field(default_factory=dict)
    val_root: list[str] = field(default_factory=list)
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)
    augment: bool = True
    # RandAugment strength (official: 3 ops per image at magnitude 5).
    augment_layers: int = 3
    augment_magnitude: float = 5.0
    num_workers: int = 4
    remove_whitespace: bool = True
    normalize_unicode: bool = True
    min_image_dim: int = 0
    # Train and validate with CLIP's mean/std (official ``openai_meanstd: true``); False uses 0.5/0.5.
    openai_meanstd: bool = True
    val_batch_size: int = 0  # 0: same as batch_size
    max_val_samples: int = 0  # 0: the whole validation set


@dataclass
class OptimConfig:
    """AdamW + OneCycle as the official ``configure_optimizers``; ``lr`` is the base rate before scaling."""

    lr: float = 8.4e-5
    decoder_lr_factor: float = 19.0  # official coef_lr
    weight_decay: float = 0.2
    decoder_wd_factor: float = 1.0  # official coef_wd
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_pct: float = 0.075
    lr_scaling: str = "official"  # 'official': lr x effective batch / 512; 'none': lr as given
    grad_clip: float = 20.0  # max gradient norm; 0 disables
    div_factor: float = 25.0  # OneCycle: initial lr = max lr / div_factor
    final_div_factor: float = 1e4  # OneCycle: final lr = initial lr / final_div_factor
    # 'onecycle' (official): warm-up then cosine anneal over the whole run. 'wsd': warm-up, a constant peak,
    # then a cosine decay over the last ``decay_pct`` of the steps; until the decay starts, max_steps can be
    # changed without changing any step already taken (a long run over sessions can be lengthened or cut).
    schedule: str = "onecycle"
    decay_pct: float = 0.2


@dataclass
class TrainConfig(JsonConfig):
    """One training run. See ``docs/training.md`` for every field."""

    name: str = "clip4str"
    model_preset: str = "vit-b16"
    # Model variants laid over the preset (or the init checkpoint's config), in order, before ``model``.
    variants: list[str] = field(default_factory=list)
    # A partial ModelConfig merged last (key by key, like a config section).
    model: dict[str, Any] = field(default_factory=dict, metadata={"section": ModelConfig})
    init: str = "random"  # 'random' | 'clip:PATH' | 'checkpoint:PATH' (a bare path means checkpoint)
    charset_train: str | None = None  # preset name ('94'), file or characters; overrides model.charset_train
    charset_test: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 128  # per device
    accumulate: int = 0  # 0: derived from effective_batch_size (1 when that is 0)
    effective_batch_size: int = 0  # 0: not checked; else devices x num_nodes x batch_size x accumulate
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    epochs: int = 0
    max_steps: int = 0  # optimizer steps; with epochs, the smaller total wins
    val_every_n_steps: int = 0  # 0: validate only at the end
    checkpoint_every_n_steps: int = 0  # resume checkpoint interval; 0: at each validation
    log_every_n_steps: int = 10
    grad_checkpointing: bool = False
    # CPU threads of each training process (torch intra-op); 0 keeps torch's default (all cores). On a small
    # machine shared with other busy processes, fewer threads avoid the collapse of oversubscription.
    threads: int = 0
    seed: int = 42
    output_dir: str = "runs/clip4str"

    # -------------------------------------------------------------------------------- derived values
    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def accumulate_steps(self) -> int:
        """Micro-batches per optimizer step."""
        if self.accumulate > 0:
            return self.accumulate
        if self.effective_batch_size > 0:
            return max(1, self.effective_batch_size // (self.world_size * self.batch_size))
        return 1

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step over all devices."""
        return self.world_size * self.batch_size * self.accumulate_steps

    @property
    def scaled_lr(self) -> float:
        """The peak learning rate of the CLIP parameters (decoders: x ``optim.decoder_lr_factor``)."""
        if self.optim.lr_scaling == "none":
            return self.optim.lr
        return self.optim.lr * self.global_batch_size / LR_REFERENCE_BATCH

    # -------------------------------------------------------------------------------- validation
    def validate(self, check_paths: bool = True, check_init: bool = True) -> None:
        """Raise :class:`ConfigError` naming the first bad value. ``check_paths=False`` skips file checks;
        ``check_init=False`` skips the ``init`` file (a resumed run does not read it)."""
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("accelerator", self.accelerator, ACCELERATORS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("optim.lr_scaling", self.optim.lr_scaling, LR_SCALINGS)
        # Bounds, so that a mistyped 1e30 fails here (naming the key), not after the model is built.
        for name, low, high in (
            ("batch_size", 1, 1 << 16),
            ("devices", 1, 1 << 12),
            ("num_nodes", 1, 1 << 12),
            ("log_every_n_steps", 1, 1 << 40),
            ("threads", 0, 1 << 12),
            ("accumulate", 0, 1 << 20),
            ("effective_batch_size", 0, 1 << 30),
            ("epochs", 0, 1 << 20),
            ("max_steps", 0, 1 << 40),
            ("val_every_n_steps", 0, 1 << 40),
            ("checkpoint_every_n_steps", 0, 1 << 40),
            ("seed", -(1 << 63), (1 << 63) - 1),
        ):
            check_int(name, getattr(self, name), low, high)
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("set epochs or max_steps (both are 0): how long should training run?")
        self._check_batch_arithmetic()
        o = self.optim
        for name in (
            "lr",
            "decoder_lr_factor",
            "weight_decay",
            "decoder_wd_factor",
            "warmup_pct",
            "grad_clip",
        ):
            check_number(f"optim.{name}", getattr(o, name), -1e12, 1e12)
        for name in ("eps", "div_factor", "final_div_factor"):
            check_number(f"optim.{name}", getattr(o, name), -1e12, 1e12)
        if not (o.lr > 0 and math.isfinite(o.lr)):
            raise ConfigError(f"optim.lr must be a positive number, got {o.lr}")
        if o.decoder_lr_factor <= 0:
            raise ConfigError(f"optim.decoder_lr_factor must be > 0, got {o.decoder_lr_factor}")
        if o.weight_decay < 0 or o.decoder_wd_factor < 0:
            raise ConfigError(
                f"optim.weight_decay and optim.decoder_wd_factor must be >= 0, got {o.weight_decay}, "
                f"{o.decoder_wd_factor}"
            )
        if not 0 < o.warmup_pct < 1:
            raise ConfigError(f"optim.warmup_pct must be in (0, 1), got {o.warmup_pct}")
        _check_choice("optim.schedule", o.schedule, SCHEDULES)
        check_number("optim.decay_pct", o.decay_pct, 0.0, 1.0)
        if o.schedule == "wsd" and o.warmup_pct + o.decay_pct > 1:
            raise ConfigError(
                f"optim.warmup_pct + optim.decay_pct must be <= 1 for the wsd schedule, got "
                f"{o.warmup_pct} + {o.decay_pct}"
            )
        if o.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0 disables clipping), got {o.grad_clip}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(o.betas)}")
        if o.eps <= 0 or o.div_factor <= 0 or o.final_div_factor <= 0:
            raise ConfigError("optim.eps, optim.div_factor and optim.final_div_factor must be > 0")
        d = self.data
        if not 0 <= d.augment_layers <= 10 or not 0 <= d.augment_magnitude <= 30:
            raise ConfigError(
                f"data.augment_layers must be in [0, 10] and data.augment_magnitude in [0, 30], got "
                f"{d.augment_layers} and {d.augment_magnitude}"
            )
        for root, times in d.train_repeat.items():
            if root not in d.train_root:
                raise ConfigError(f"data.train_repeat names {root!r}, which is not in data.train_root")
            if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= 10_000:
                raise ConfigError(
                    f"data.train_repeat[{root!r}] must be an integer in [1, 10000], got {times!r}"
                )
        check_int("data.synth.count", d.synth.count, 0, 1 << 40)
        check_int("data.synth.max_length", d.synth.max_length, 1, 1 << 10)
        check_number("data.synth.random_ratio", d.synth.random_ratio, 0.0, 1.0)
        if not d.train_root and d.synth.count == 0:
            raise ConfigError(
                "no training data: set data.train_root (LMDBs) or data.synth.count (rendered words)"
            )
        for name, low, high in (
            ("num_workers", 0, 256),
            ("val_batch_size", 0, 1 << 16),
            ("max_val_samples", 0, 1 << 40),
            ("min_image_dim", 0, 1 << 16),
        ):
            check_int(f"data.{name}", getattr(d, name), low, high)
        if d.num_workers < 0 or d.val_batch_size < 0 or d.max_val_samples < 0 or d.min_image_dim < 0:
            raise ConfigError(
                "data.num_workers, data.val_batch_size, data.max_val_samples and data.min_image_dim must be >= 0"
            )
        kind, path = parse_init(self.init)
        model_cfg = resolve_model_config(self)  # unknown/mistyped model keys, charsets, image size
        train_chars = set(model_cfg.charset_train)
        missing = sorted(set(model_cfg.resolved_charset_test) - train_chars)
        if missing:
            raise ConfigError(
                f"charset_test has characters that are not in charset_train: {''.join(missing)!r}; "
                "validation labels are encoded with the training charset, so charset_test must be a subset"
            )
        if check_paths:
            if check_init and kind != "random" and not Path(path).exists():
                raise ConfigError(f"init: {kind} file {path!r} does not exist")
            synth_paths = ([d.synth.vocab] if d.synth.vocab else []) + d.synth.fonts if d.synth.count else []
            for key, roots in (
                ("data.train_root", d.train_root),
                ("data.val_root", d.val_root),
                ("data.synth", synth_paths),
            ):
                for root in roots:
                    if not Path(root).exists():
                        raise ConfigError(f"{key}: path {root!r} does not exist")
            self._check_machine()

    def _check_machine(self) -> None:
        """The accelerator and precision must exist on this machine (checked before any work starts)."""
        import torch

        fix = "e.g. --set accelerator=cpu precision=32-true (or bf16-mixed)"
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"accelerator={self.accelerator!r} but this machine has no usable CUDA GPU (torch "
                f"{torch.__version__}); run on a GPU machine or train on the CPU: {fix}"
            )
        if self.accelerator == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"accelerator='mps' but MPS is not available here; {fix}")
        on_cpu = self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())
        if on_cpu and self.precision == "16-mixed":
            raise ConfigError(
                "precision='16-mixed' (fp16) needs a GPU; on the CPU use precision=32-true or bf16-mixed"
            )
        if self.accelerator in ("gpu", "cuda") and torch.cuda.device_count() < self.devices:
            raise ConfigError(
                f"devices={self.devices} but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                "set devices to at most that number (effective_batch_size keeps the recipe's batch)"
            )

    def _check_batch_arithmetic(self) -> None:
        per_micro_step = self.world_size * self.batch_size
        if self.effective_batch_size <= 0:
            return
        parts = f"devices ({self.devices}) x num_nodes ({self.num_nodes}) x batch_size ({self.batch_size})"
        if self.accumulate == 0:
            if self.effective_batch_size % per_micro_step:
                raise ConfigError(
                    f"effective_batch_size={self.effective_batch_size} is not a multiple of {parts} = "
                    f"{per_micro_step}, so no whole number of accumulation steps reaches it; change batch_size "
                    "or devices, or set effective_batch_size=0 and accumulate explicitly"
                )
        elif per_micro_step * self.accumulate != self.effective_batch_size:
            raise ConfigError(
                f"effective_batch_size={self.effective_batch_size} but {parts} x accumulate ({self.accumulate}) "
                f"= {per_micro_step * self.accumulate}; set accumulate=0 to derive it, or fix the values"
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def parse_init(init: str) -> tuple[str, str]:
    """``'random'`` → ('random', ''); ``'clip:PATH'`` → ('clip', PATH); ``'checkpoint:PATH'`` or a bare
    path → ('checkpoint', PATH)."""
    if init == "random":
        return "random", ""
    for kind in ("clip", "checkpoint"):
        if init.startswith(kind + ":"):
            path = init[len(kind) + 1 :]
            if not path:
                raise ConfigError(f"init {init!r} names no file after '{kind}:'")
            return kind, path
    if not init:
        raise ConfigError("init is empty; use 'random', 'clip:PATH' or 'checkpoint:PATH'")
    return "checkpoint", init


# ------------------------------------------------------------------------------------------ model config
def resolve_model_config(cfg: TrainConfig, base: ModelConfig | None = None) -> ModelConfig:
    """The :class:`ModelConfig` to train: ``base`` (default: ``cfg.model_preset``) with ``cfg.variants`` and
    ``cfg.model`` merged on top, the charsets resolved, and the training normalisation recorded in
    ``preprocess``.
    """
    from clip4str.presets import load_variant, model_preset

    if not isinstance(cfg.model, dict):
        raise ConfigError(f"model must be a mapping of ModelConfig fields, got {type(cfg.model).__name__}")
    data = to_dict(model_preset(cfg.model_preset) if base is None else base)
    for variant in cfg.variants:
        merge_into(ModelConfig, data, load_variant(variant), f"variant {variant}")
    merge_into(ModelConfig, data, cfg.model, "model")
    merge_into(
        ModelConfig, data, {k: getattr(cfg, k) for k in ("charset_train", "charset_test") if getattr(cfg, k)}
    )
    if not {"mean", "std"} & set(cfg.model.get("preprocess", {})):
        stats = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if cfg.data.openai_meanstd else (HALF_MEAN_STD,) * 2
        data["preprocess"]["mean"], data["preprocess"]["std"] = list(stats[0]), list(stats[1])
    model_cfg = from_dict(ModelConfig, data, prefix="model")
    size = model_cfg.clip.vision.image_hw
    if tuple(model_cfg.preprocess.image_size) != size:
        raise ConfigError(
            f"model.preprocess.image_size {list(model_cfg.preprocess.image_size)} must equal the ViT input "
            f"{list(size)} (model.clip.vision.image_size); set both"
        )
    if model_cfg.perm_mirrored and model_cfg.perm_num % 2:
        raise ConfigError(f"model.perm_num must be even when perm_mirrored is true, got {model_cfg.perm_num}")
    return model_cfg


# ------------------------------------------------------------------------------------------ loading
def _preset_dir() -> Path:
    return Path(str(resources.files("clip4str") / "configs" / "train"))


def train_preset_names() -> list[str]:
    """Names of the shipped training recipes (``clip4str/configs/train/*.json``)."""
    return sorted(p.stem for p in _preset_dir().glob("*.json"))


def _as_lists(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config whose ``data.train_root``/``val_root`` may be one string: as lists."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train_root", "val_root"):
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
    return raw


def _read_raw(spec: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config file (or preset) as a raw dict, with the chain of files it ``extends`` merged under it."""
    path = Path(spec)
    if not (path.suffix == ".json" or path.is_file()):
        candidate = _preset_dir() / f"{spec}.json"
        if not candidate.is_file():
            raise ConfigError(
                f"training config {str(spec)!r} is neither a file nor a preset; presets: "
                f"{', '.join(train_preset_names())}"
            )
        path = candidate
    if not path.exists():
        raise ConfigError(f"training config file {str(path)!r} does not exist")
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"training config {path} extends itself (cycle through {', '.join(seen)})")
    from clip4str.files import read_text_file

    raw = parse_json(read_text_file(path, "training config", ConfigError, max_bytes=1 << 24), str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    parent = raw.get("extends")
    if isinstance(parent, str) and not Path(parent).is_absolute() and (path.parent / parent).is_file():
        raw["extends"] = str(path.parent / parent)
    return _extended(raw, (*seen, key), str(path))


def _extended(raw: dict[str, Any], seen: tuple[str, ...], source: str) -> dict[str, Any]:
    raw = _as_lists(raw)
    raw.pop("description", None)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{source}: 'extends' must be a preset name or a path, got {parent!r}")
    base = _read_raw(parent, seen)
    merge_into(TrainConfig, base, raw)
    return base


def load_train_config(
    spec: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a training config from a JSON file, a preset name or a dict, apply ``key=value`` overrides.

    Types and key names are checked here (:class:`ConfigError` names the key); call
    :meth:`TrainConfig.validate` for the value checks (ranges, batch arithmetic, paths).
    """
    if isinstance(spec, dict):
        raw = _extended(json.loads(json.dumps(spec)), (), "training config")
    else:
        raw = _read_raw(spec)
    merge_into(TrainConfig, raw, list(overrides))
    return from_dict(TrainConfig, _as_lists(raw))


def config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (for resume checks)."""
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else k)
        elif x != y:
            out.append(where)

    walk(to_dict(a), to_dict(b), "")
    return out
