"""torch.hub entry points for CLIP4STR.

    import torch
    model = torch.hub.load("<owner>/<repo>", "clip4str_base", pretrained=True)   # CLIP4STR nn.Module, eval mode
    reader = torch.hub.load("<owner>/<repo>", "recognizer", "clip4str-base")     # images -> text
    print(reader.read(["word.png"])[0].text)

Every model entry is :func:`clip4str.factory.create_model` for its release name: ``pretrained`` (default
True) loads the released checkpoint (downloaded once into the Hugging Face cache), ``pretrained=False``
builds the release's architecture untrained. Keywords go to ``create_model``: ``map_location='cuda'``,
``cache_dir=``, ``progress=``, ``variants=`` (untrained only) and config overrides, as fields
(``charset_train='0123456789'``, ``decoder={'num_heads': 4}``) or as ``overrides={'decoding.refine_iters': 2}``
(dotted keys, or a list of ``'key=value'`` strings).

Entry names: ``clip4str_small`` (shipped inside the package), ``clip4str_base``, ``clip4str_large``, ``clip4str_huge`` (the best release of each size) and
one per release file; ``docs/models.md`` describes them.
"""

dependencies = ["torch", "numpy", "PIL", "safetensors", "huggingface_hub", "ftfy", "regex", "tqdm"]

import sys as _sys  # noqa: E402 - torch.hub reads `dependencies` first by convention
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
    from clip4str.config import parse_overrides
    from clip4str.factory import create_model

    overrides = parse_overrides(kwargs.pop("overrides", None))
    return create_model(name, pretrained, **kwargs, **overrides)


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
