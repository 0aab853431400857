"""Checkpoint integrity (SPEC): a digest of config and tensors is checked on load; writes are durable
and get the user's usual file mode."""

from __future__ import annotations

import os
import stat
import struct

import numpy as np
import pytest

from rosetta import checkpoint
from rosetta.checkpoint import build_model, load_checkpoint, save_checkpoint

CONFIG = {"model": {"src_vocab_size": 7, "tgt_vocab_size": 7, "d_model": 8, "num_heads": 2, "d_ff": 8,
                    "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 256, "dropout": 0.0,
                    "padding_idx": 0}}


@pytest.fixture
def saved(tmp_path):
    model = build_model(CONFIG)
    return save_checkpoint(tmp_path / "model.safetensors", model, CONFIG), model


def header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def test_a_saved_checkpoint_loads_back_equal(saved):
    path, model = saved
    loaded, config = load_checkpoint(path)
    assert config == CONFIG
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_in_the_tensors_is_refused(saved, where):
    path, _ = saved
    data = bytearray(path.read_bytes())
    start = header_end(data)
    index = {"first": start, "middle": (start + len(data)) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt.*SHA-256") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("before, after", [('"max_len": 256', '"max_len": 356'), ('"dropout": 0.0', '"dropout": 0.1'),
                                           ('"padding_idx": 0', '"padding_idx": 1')])
def test_an_edited_config_is_refused(saved, before, after):
    path, _ = saved
    data = path.read_bytes()
    end = header_end(data)
    header = data[:end].decode("latin-1")
    # the config sits in the metadata as an escaped JSON string: '"max_len\\": 256'
    escaped_before, escaped_after = before.replace('"', '\\"'), after.replace('"', '\\"')
    assert header.count(escaped_before) == 1, header
    path.write_bytes(header.replace(escaped_before, escaped_after).encode("latin-1") + data[end:])
    with pytest.raises(ValueError, match=r"corrupt.*SHA-256"):
        load_checkpoint(path)


def test_a_removed_digest_is_refused(saved, tmp_path):
    import safetensors.numpy

    path, _ = saved
    with safetensors.safe_open(path, "numpy") as file:
        metadata = dict(file.metadata())
    tensors = safetensors.numpy.load(path.read_bytes())
    del metadata["sha256"]
    (tmp_path / "bare.safetensors").write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    with pytest.raises(ValueError, match="digest"):
        load_checkpoint(tmp_path / "bare.safetensors")


def test_the_digest_covers_names_dtypes_and_shapes():
    a = {"w": np.arange(4, dtype=np.float32)}
    base = checkpoint.content_digest("{}", a)
    assert checkpoint.content_digest("{}", {"v": a["w"]}) != base
    assert checkpoint.content_digest("{}", {"w": a["w"].reshape(2, 2)}) != base
    assert checkpoint.content_digest("{}", {"w": a["w"].view(np.int32)}) != base
    assert checkpoint.content_digest("{ }", a) != base
    assert checkpoint.content_digest("{}", {"w": a["w"].copy()}) == base


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_file_gets_the_users_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", build_model(CONFIG), CONFIG)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_checkpoint(tmp_path / "m.safetensors", build_model(CONFIG), CONFIG)
    assert synced == [False, True]  # the data, then (after the rename) the folder
