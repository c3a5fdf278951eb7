"""Memory from one weights file (issue 24, items 4, 5 and 13): storages are bounded by the file together,
repeated views are refused, and a file is compared with its config before any model is built."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch

from clip4str.errors import CheckpointError
from clip4str.safe_pickle import load_pickle


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch's own rebuild of a float tensor over a storage record."""

    def __init__(self, storage: _Storage, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, 0, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, None)
        return None


def legacy_file(path, tensors: dict[str, _Tensor], data: dict[str, bytes]) -> None:
    """A legacy (pre-zip) torch.save stream: magic, protocol, system info, the pickle, its storage keys,
    then each storage's element count and bytes (``data``, possibly shorter than claimed)."""
    with open(path, "wb") as f:
        for header in (
            0x1950A86A20F9469CFC6C,
            1001,
            {
                "protocol_version": 1001,
                "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4},
            },
        ):
            pickle.dump(header, f, protocol=2)
        _Pickler(f, protocol=2).dump(tensors)
        pickle.dump(list(data), f, protocol=2)
        for blob in data.values():
            f.write(struct.pack("<q", len(blob) // 4))
            f.write(blob)


def test_legacy_storages_are_bounded_by_the_file_together(tmp_path):
    """Issue 24 item 4: each storage was checked against the file size alone and allocated zero-filled, so
    a 40 MB file could ask for 16 GB. Now they must fit in the file together, before any is allocated."""
    numel = 16384  # 64 KiB each: each one alone fits the ~100 KiB file, two do not
    tensors = {f"w{i}": _Tensor(_Storage(str(i), numel), (numel,), (1,)) for i in range(400)}
    path = tmp_path / "legacy.pt"
    legacy_file(path, tensors, {"0": b"\0" * 4 * numel})
    assert 4 * numel < path.stat().st_size < 2 * 4 * numel
    with pytest.raises(CheckpointError, match=r"storages \(2 so far\) add up to"):
        load_pickle(path)


def test_a_real_legacy_file_still_loads(tmp_path):
    path = tmp_path / "ok.pt"
    storage = _Storage("0", 6)
    legacy_file(path, {"a": _Tensor(storage, (2, 3), (3, 1))}, {"0": struct.pack("<6f", *range(6))})
    assert torch.equal(load_pickle(path)["a"], torch.arange(6.0).view(2, 3))


@pytest.mark.parametrize("zipped", [True, False])
def test_stride_zero_views_are_refused(tmp_path, zipped):
    """Issue 24 item 5: a 2-byte storage viewed as 100000 x 100000 passed the record-size check and became
    40 GB at `.float()`."""
    path = tmp_path / "stride0.pt"
    torch.save(
        {"w": torch.zeros(1, dtype=torch.float16).expand(100000, 100000)},
        path,
        _use_new_zipfile_serialization=zipped,
    )
    with pytest.raises(CheckpointError, match="zero or overlapping strides"):
        load_pickle(path)
    small = tmp_path / "small.pt"  # a small repeated view (an expanded bias) still loads
    torch.save({"w": torch.ones(1).expand(4, 8)}, small, _use_new_zipfile_serialization=zipped)
    assert torch.equal(load_pickle(small)["w"], torch.ones(4, 8))


def test_names_and_shapes_are_compared_before_the_model_is_built(tmp_path, monkeypatch):
    """Issue 24 item 5: load_model called .float() on every tensor before comparing keys and shapes."""
    from clip4str import checkpoints
    from clip4str.presets import model_preset

    config = model_preset("tiny")
    shapes = checkpoints.expected_shapes(config)
    sd = {k: torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()}
    first = next(iter(sd))
    sd[first] = torch.zeros(3, dtype=torch.bfloat16)
    sd["extra.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    folder = tmp_path / "m"  # an own-format folder whose state dict does not fit its config
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(config.to_json())
    built = []
    monkeypatch.setattr(
        checkpoints,
        "build_for_weights",
        lambda c, real=checkpoints.build_for_weights: (built.append(torch.get_default_device()), real(c))[1],
    )
    with pytest.raises(CheckpointError, match=r"1 unexpected key.*1 mis-shaped key"):
        checkpoints.load_model(folder)
    assert built and all(d.type == "meta" for d in built)  # only the shapes were built, never a real model


def test_an_oversized_config_is_compared_with_the_weights_before_allocating(tmp_path):
    """Issue 24 item 13: an in-bounds but huge config.json beside small weights built the huge model first."""
    import shutil

    from clip4str.model.clip4str import CLIP4STR
    from clip4str.presets import model_preset
    from clip4str.weights import save_model

    torch.manual_seed(0)
    folder = save_model(CLIP4STR(model_preset("tiny")), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["clip"]["vision"].update(width=2048, layers=32, heads=16)  # ~1.6 G parameters, 6.4 GB
    (folder / "config.json").write_text(json.dumps(config))
    code = textwrap.dedent(f"""
        import sys
        from clip4str.checkpoints import load_model
        from clip4str.errors import CheckpointError
        try:
            load_model({str(folder)!r})
        except CheckpointError as err:
            print("refused:", str(err)[:300])
        # VmHWM: this program's peak (ru_maxrss would count the forking pytest process too)
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
        print("peak_mb", int(hwm.split()[1]) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "refused:" in out.stdout and "do not fit" in out.stdout, out.stdout + out.stderr
    peak = int(out.stdout.split("peak_mb")[1])
    assert peak < 2000, f"peak RSS {peak} MB: the model was built before the comparison"
    shutil.rmtree(folder)
