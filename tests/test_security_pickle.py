"""Hostile pickles and TorchScript archives: no code from a file ever runs, every path reads through one
restricted reader (issue 11, items 1 and 2)."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import clip4str
from clip4str.checkpoints import load_model, read_checkpoint
from clip4str.cli import main
from clip4str.clip.weights import load_clip_state_dict, read_tensor_file, sniff_format
from clip4str.errors import CheckpointError
from clip4str.safe_pickle import load_pickle


class Evil:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def exploit_works(path: Path, marker: Path) -> bool:
    """Prove the file is a working exploit for plain unpickling (what the old loaders reached), then clean up."""
    with open(path, "rb") as f:
        try:
            torch.load(f, weights_only=False)
        except Exception:  # noqa: BLE001 - torch rejects the stream after the payload ran
            pass
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def hostile_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """name → (file, marker it would create)."""
    out = {}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        marker = tmp_path / f"marker-p{protocol}"
        path = tmp_path / f"raw-p{protocol}.ckpt"
        with open(path, "wb") as f:
            pickle.dump(Evil(marker), f, protocol=protocol)
        out[f"plain pickle protocol {protocol}"] = (path, marker)
    for zipped in (False, True):
        marker = tmp_path / f"marker-torch-{zipped}"
        path = tmp_path / f"torch-{zipped}.pt"
        torch.save({"state_dict": {"w": Evil(marker)}}, path, _use_new_zipfile_serialization=zipped)
        out[f"torch.save zip={zipped}"] = (path, marker)
    return out


def test_plain_pickle_exploit_from_the_issue_no_longer_runs(tmp_path):
    files = hostile_files(tmp_path)
    path, marker = files["plain pickle protocol 2"]
    assert exploit_works(path, marker)  # the repro: torch's legacy reader runs it
    for name, (path, marker) in files.items():
        for reader in (read_checkpoint, read_tensor_file, load_pickle):
            with pytest.raises(CheckpointError) as info:
                reader(path)
            message = str(info.value)
            assert str(path) in message and "\n" not in message, (name, message)
            assert not marker.exists(), (name, reader.__name__)


def test_exploit_through_cli_read_load_and_train_init(tmp_path, capsys):
    path, marker = hostile_files(tmp_path)["plain pickle protocol 2"]
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 16), "white").save(image)

    assert main(["read", "--model", str(path), str(image)]) == 1
    err = capsys.readouterr().err.strip()
    assert "refuses to unpickle" in err and "posix.system" in err and len(err.splitlines()) == 1
    assert not marker.exists()

    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        clip4str.load(str(path))
    assert not marker.exists()

    from clip4str.train.config import load_train_config
    from clip4str.train.init_model import build_model

    for init in (f"checkpoint:{path}", f"clip:{path}"):
        with pytest.raises(CheckpointError, match="refuses to unpickle"):
            build_model(load_train_config("tiny", [f"init={init}"]))
        assert not marker.exists()


def test_objects_in_lightning_hyper_parameters_stay_inert(tmp_path):
    """Lightning files may pickle objects (OmegaConf, AttributeDict): they become data, never run."""
    marker = tmp_path / "marker"
    path = tmp_path / "model.ckpt"
    state = {"w": torch.ones(2)}
    torch.save({"state_dict": state, "hyper_parameters": {"x": Evil(marker), "n": 3}}, path)
    sd, hparams, _ = read_checkpoint(path)
    assert torch.equal(sd["w"], state["w"]) and hparams["n"] == 3
    assert not marker.exists()


def test_legacy_files_of_every_protocol_load_without_torch_load(tmp_path):
    base = torch.arange(12.0)
    data = {
        "f16": torch.ones(3, dtype=torch.float16),
        "view": base[2:10].view(2, 4).t(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "meta": [1, 2.5, "x", None, b"\x00\xff"],
    }
    for protocol in (1, 2, 4, 5):
        for zipped in (False, True):
            path = tmp_path / f"p{protocol}-{zipped}.pt"
            torch.save(data, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
            assert sniff_format(path) == "pickle"
            got = load_pickle(path)
            assert got["meta"] == data["meta"]
            for key in ("f16", "view", "param", "scalar", "empty"):
                assert got[key].dtype == data[key].dtype and torch.equal(got[key], data[key].detach()), key


def test_tensor_past_its_storage_is_refused_not_grown(tmp_path):
    """A pickle claiming a tensor larger than its data record must not allocate or read out of bounds."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.ones(4)}, path)
    with zipfile.ZipFile(path) as src:
        entries = {i.filename: src.read(i) for i in src.infolist()}
    name = next(n for n in entries if n.endswith("data.pkl"))
    entries[name] = entries[name].replace(b"K\x04\x85", b"J\x00\x00\x00\x40\x85")  # size (4,) → (2**30,)
    assert entries[name] != zipfile.ZipFile(path).read(name)
    forged = tmp_path / "forged.pt"
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_STORED) as dst:
        for n, blob in entries.items():
            dst.writestr(n, blob)
    with pytest.raises(CheckpointError, match="reaches past the end of its storage"):
        load_pickle(forged)


# ------------------------------------------------------------------------------------------ TorchScript
def test_torchscript_is_read_without_torch_jit_load(golden_dir, monkeypatch):
    """OpenAI's archives load from their data records; torch.jit.load is never called, values identical."""
    path = golden_dir / "tiny_clip_jit.pt"
    reference = dict(torch.jit.load(str(path), map_location="cpu").state_dict())

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    got = read_tensor_file(path)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert len(load_clip_state_dict(path)) == 62


class OverwritesAFile(torch.nn.Module):
    """Scripted, its ``__setstate__`` (run by torch.jit.load) maps the file ``victim`` and overwrites it."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool, str]:
        return (self.w, self.training, self.victim)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]) -> None:
        self.w = state[0]
        self.training = state[1]
        self.victim = state[2]
        mapped = torch.from_file(self.victim, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(65)
        print(mapped.sum())


def test_torchscript_archive_that_overwrites_a_file_is_read_as_data(tmp_path):
    victim = tmp_path / "victim.txt"
    hostile = tmp_path / "evil.pt"
    victim.write_bytes(b"original")
    torch.jit.script(OverwritesAFile(str(victim))).save(str(hostile))
    torch.jit.load(str(hostile))  # the repro: torch.jit.load runs the archive's code
    assert victim.read_bytes() == b"AAAAinal"
    victim.write_bytes(b"original")

    assert sniff_format(hostile) == "torchscript"
    with pytest.raises(CheckpointError, match="without module weights"):  # its state is a custom tuple
        load_clip_state_dict(hostile)
    from clip4str.train.config import load_train_config
    from clip4str.train.init_model import build_model

    with pytest.raises(CheckpointError):
        build_model(load_train_config("tiny", [f"init=clip:{hostile}"]))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_model(hostile)
    assert victim.read_bytes() == b"original"


def test_torchscript_with_a_foreign_global_is_inert(tmp_path):
    """A data.pkl naming os.system (as a TorchScript archive) builds placeholders and never calls it."""
    marker = tmp_path / "marker"
    path = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", pickle.dumps(Evil(marker), protocol=2))
        archive.writestr("m/constants.pkl", pickle.dumps((), protocol=2))
    assert sniff_format(path) == "torchscript"
    with pytest.raises(CheckpointError, match="without module weights"):
        load_clip_state_dict(path)
    assert not marker.exists()


def test_no_module_calls_torch_load_or_jit_load():
    """The package reads pickles in one place: nothing else calls torch/jit/pickle loaders."""
    root = Path(clip4str.__file__).parent
    banned = {"torch.load", "torch.jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler"}
    offenders = []
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) in banned
                and file.name != "safe_pickle.py"
            ):
                offenders.append(f"{file.relative_to(root)}:{node.lineno}: {ast.unparse(node.func)}")
    assert offenders == []


@pytest.mark.skipif(shutil.which("touch") is None or sys.platform == "win32", reason="needs a POSIX shell")
def test_marker_helper_really_executes():
    """Guard for the tests above: the Evil payload does run under plain pickle."""
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"clip4str-evil-{os.getpid()}"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()
    marker.unlink()
