"""A new user's first run (issue 11, item 12): downloads say what and how big before the wait, offline fails
at once, the device is checked before anything is downloaded. No test touches the network."""

from __future__ import annotations

import socket
import time

import huggingface_hub
import pytest
import torch

import clip4str
from clip4str import hub
from clip4str.errors import ModelNotFoundError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(hub, "_open_url", no_download)


def test_offline_machine_gets_the_message_at_once(monkeypatch):
    def no_route(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        hub.resolve_model("clip4str-large")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert "huggingface.co cannot be reached" in message and "clip4str_large_3c9d881b88.pt" in message
    assert "--model /path/to/" in message


def test_download_announces_file_and_size_before_the_wait(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hub, "_unreachable", lambda host: None)
    target = tmp_path / "clip4str_large_3c9d881b88.pt"
    target.write_bytes(b"x")

    def fake_download(repo, filename, **kwargs):
        assert "downloading model 'clip4str-large'" in capsys.readouterr().err  # printed before
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert hub.resolve_model("clip4str-large") == target


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_is_checked_before_any_download(monkeypatch):
    def no_resolve(*args, **kwargs):
        raise AssertionError("the model was resolved (downloaded) before the device check")

    monkeypatch.setattr(hub, "resolve_model", no_resolve)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        clip4str.load("clip4str-large", device="cuda")


def test_download_command_names_the_installed_tool():
    from importlib.metadata import version

    tool = "hf" if int(version("huggingface_hub").split(".")[0]) >= 1 else "huggingface-cli"
    assert hub.download_command("M-CLIP/x") == f"{tool} download M-CLIP/x"
