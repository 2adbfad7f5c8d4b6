"""Files cannot run code: pickles in checkpoints and .npy inputs, Python modules named by an
ONNX domain. Each test first shows that the payload is live (an unsafe load runs it), then
that lowbit refuses the file without running it.
"""

from __future__ import annotations

import io
import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lowbit.errors import InputError, ModelFileError
from lowbit.infer import load_input
from lowbit.train.checkpoint import load_checkpoint
from lowbit.verify.api import load_graph

from .files import Payload, good_model


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_checkpoint_pickle_payload_is_refused_unrun(tmp_path, container):
    marker, path = tmp_path / "PWNED", tmp_path / "checkpoint.pt"
    if container == "torch_zip":
        torch.save({"model": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    if container == "torch_zip":  # the control: an unsafe load runs it
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelFileError, match=r"checkpoint\.pt: cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_npy_pickle_payload_is_refused_unrun(tmp_path):
    marker, path = tmp_path / "PWNED", tmp_path / "x.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.load(path, allow_pickle=True)  # the control
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError, match="holds Python objects"):
        load_input(path)
    assert not marker.exists()


def test_npy_giant_header_is_refused_before_allocation(tmp_path):
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3, 32, 32)}
    np.lib.format.write_array_header_2_0(buffer, header)  # 12 TB declared
    (tmp_path / "x.npy").write_bytes(buffer.getvalue() + b"\0" * 64)
    with pytest.raises(InputError, match=r"declares shape \[1000000000, 3, 32, 32\]"):
        load_input(tmp_path / "x.npy")


@pytest.fixture
def payload_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """An importable module that writes a marker when imported: what a domain could name."""
    name, marker = f"lowbit_payload_{uuid.uuid4().hex[:8]}", tmp_path / "PWNED"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_onnx_domain_cannot_import_a_module(tmp_path, payload_module):
    """qonnx's executor imports a node's domain as a Python module; lowbit checks first."""
    from qonnx.custom_op.registry import is_custom_op

    name, marker = payload_module
    model = good_model()
    model.graph.node[1].domain = name  # the input Quant
    path = tmp_path / "model.qonnx.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelFileError, match=f"domain '{name}'"):
        load_graph(path)
    assert not marker.exists()
    from lowbit.runtime import Runtime

    with pytest.raises(ModelFileError, match=f"domain '{name}'"):
        Runtime(path)
    assert not marker.exists()
    is_custom_op(name, "Quant")  # the control: qonnx's registry imports it
    assert marker.exists()


def test_external_data_is_never_read(tmp_path):
    """An initializer pointing at another file is refused; the file is not opened."""
    from lowbit.runtime import Runtime

    from .files import bad_model

    (tmp_path / "secrets.bin").write_bytes(b"\x00" * 4)
    onnx.save(bad_model("external_data"), tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="external file"):
        Runtime(tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="external data"):
        load_graph(tmp_path / "m.onnx")
