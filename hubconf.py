"""torch.hub entry points for CLIP4STR.

    import torch
    model = torch.hub.load("<owner>/<repo>", "clip4str_base", pretrained=True)   # CLIP4STR nn.Module, eval mode
    reader = torch.hub.load("<owner>/<repo>", "recognizer", "clip4str-base")     # images -> text
    print(reader.read(["word.png"])[0].text)

Every model entry takes ``pretrained`` (default True) and keyword arguments:

* ``pretrained=True``: the released checkpoint is resolved with :func:`clip4str.hub.resolve_model`
  (downloaded once into the Hugging Face cache; ``cache_dir=`` and ``progress=`` are passed to it) and
  loaded with :func:`clip4str.checkpoints.load_model` (other keywords, e.g. ``map_location='cuda'`` or
  ``overrides={'decoding.refine_iters': 2}``, are passed to it).
* ``pretrained=False``: an untrained model of the release's architecture; keywords are config overrides
  for :func:`clip4str.presets.model_preset` (e.g. ``charset_train='0123456789'``).

Entry names: ``clip4str_small`` (shipped inside the package), ``clip4str_base``, ``clip4str_large``, ``clip4str_huge`` (the best release of each size) and
one per release file; ``docs/models.md`` describes them.
"""

dependencies = ["torch", "numpy", "PIL", "safetensors", "huggingface_hub", "ftfy", "regex", "tqdm"]

import json as _json  # noqa: E402 - torch.hub reads `dependencies` first by convention
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402
from typing import Any as _Any  # noqa: E402

_SRC = _Path(__file__).resolve().parent / "src"


def _import_clip4str() -> None:
    # A torch.hub checkout is not pip-installed: make its src/ importable (an installed clip4str that is
    # already imported is left alone).
    if "clip4str" not in _sys.modules and (_SRC / "clip4str").is_dir() and str(_SRC) not in _sys.path:
        _sys.path.insert(0, str(_SRC))


def _model(name: str, pretrained: bool, kwargs: dict[str, _Any]) -> _Any:
    _import_clip4str()
    from clip4str import hub

    release = hub.RELEASES[name]
    if pretrained:
        from clip4str.checkpoints import load_model

        cache_dir = kwargs.pop("cache_dir", None)
        progress = kwargs.pop("progress", True)
        path = hub.resolve_model(name, cache_dir=cache_dir, progress=progress)
        if release.config_overrides:  # the release's own fixes first, the caller's on top
            user = kwargs.get("overrides")
            if user is None or isinstance(user, dict):
                kwargs["overrides"] = {**release.config_overrides, **(user or {})}
            else:
                fixed = [f"{k}={_json.dumps(v)}" for k, v in release.config_overrides.items()]
                kwargs["overrides"] = fixed + list(user)
        return load_model(path, **kwargs)
    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset

    return CLIP4STR(model_preset(release.preset, **kwargs))


def clip4str_small(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """CLIP4STR-small: the from-scratch CPU model shipped inside the package (32x128 input; no download)."""
    return _model("clip4str-small", pretrained, kwargs)


def clip4str_base(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """CLIP4STR-B: the best released ViT-B/16 (DataComp-1B pre-training, trained on RBU 6.5M)."""
    return _model("clip4str-base", pretrained, kwargs)


def clip4str_large(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """CLIP4STR-L: the best released ViT-L/14 (DataComp-1B pre-training, trained on RBU 6.5M)."""
    return _model("clip4str-large", pretrained, kwargs)


def clip4str_huge(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """CLIP4STR-H: the best released ViT-H/14 (DFN-5B pre-training, trained on RBU 6.5M)."""
    return _model("clip4str-huge", pretrained, kwargs)


def clip4str_base16_openai_synth(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-B/16, OpenAI CLIP, trained on MJ+ST (clip4str_base16x16_synth_a5e3386222.ckpt, GitHub)."""
    return _model("clip4str-base16-openai-synth", pretrained, kwargs)


def clip4str_base16_openai_real(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-B/16, OpenAI CLIP, trained on Real 3.3M (clip4str_base16x16_d70bde1f2d.ckpt, GitHub)."""
    return _model("clip4str-base16-openai-real", pretrained, kwargs)


def clip4str_large14_openai_synth(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-L/14, OpenAI CLIP, trained on MJ+ST (Zenodo record 8369439, hash 3544c362f0)."""
    return _model("clip4str-large14-openai-synth", pretrained, kwargs)


def clip4str_large14_openai_real(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-L/14, OpenAI CLIP, trained on Real 3.3M (clip4str_large14x14_f125500adc.ckpt, Zenodo)."""
    return _model("clip4str-large14-openai-real", pretrained, kwargs)


def clip4str_base16_datacomp_rbu(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-B/16, DataComp-1B, trained on RBU 6.5M (clip4str_base_6e9fe947ac.pt, Hugging Face)."""
    return _model("clip4str-base16-datacomp-rbu", pretrained, kwargs)


def clip4str_large14_datacomp_rbu(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-L/14, DataComp-1B, trained on RBU 6.5M (clip4str_large_3c9d881b88.pt, Hugging Face)."""
    return _model("clip4str-large14-datacomp-rbu", pretrained, kwargs)


def clip4str_huge14_laion_rbu(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-H/14, LAION-2B, trained on RBU 6.5M (clip4str_huge_5eef9f86e2.pt, Hugging Face)."""
    return _model("clip4str-huge14-laion-rbu", pretrained, kwargs)


def clip4str_huge14_dfn_rbu(pretrained: bool = True, **kwargs: _Any) -> _Any:
    """ViT-H/14, DFN-5B, trained on RBU 6.5M (clip4str_huge_3e942729b1.pt, Hugging Face)."""
    return _model("clip4str-huge14-dfn-rbu", pretrained, kwargs)


def recognizer(model: str = "clip4str-base", **kwargs: _Any) -> _Any:
    """A ready-to-use :class:`clip4str.Recognizer` (preprocessing + model + decoding) for a release name or
    a path; keywords go to :func:`clip4str.load` (e.g. ``device='cuda'``)."""
    _import_clip4str()
    import clip4str

    return clip4str.load(model, **kwargs)
