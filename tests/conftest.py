"""Shared fixtures: paths into ../shared (skipped when absent, a failure under CI=true)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLIP4STR_SHARED", PROJECT_ROOT.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared(relative: str) -> Path:
    """Path to ``../shared/<relative>``; skips the test when absent, fails it under CI (where it must exist)."""
    path = SHARED / relative
    if not path.exists():
        message = f"reference file {path} is missing"
        if IN_CI:
            pytest.fail(message + " (CI=true: ../shared must be present)")
        pytest.skip(message)
    return path


def offline_env(home: Path) -> dict[str, str]:
    """This process's environment as a fresh offline machine would have it: no network, empty caches under
    ``home``, no clip4str or Hugging Face variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "CLIP4STR_"))}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "cache"),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # never reach the network, even if offline mode were ignored
    )
    return env


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return require_shared("golden")


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    return require_shared("realdata")


@pytest.fixture(scope="session")
def bpe_path() -> Path:
    return require_shared("clip_bpe/bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(autouse=True)
def _small_thread_count():
    # Two cores on CI: keep intra-op threads bounded so parallel tests do not oversubscribe.
    torch.set_num_threads(2)
    yield
