"""Full-size ResNet-50 and BERT-base (random weights): export, parity at 2+ sizes per axis, served."""

from __future__ import annotations

import numpy as np
import pytest

from tensorwire.export import build_builtin, export_model
from tensorwire.export.testing import infer_grpc, random_inputs, torch_reference

pytest.importorskip("torch")
pytest.importorskip("transformers")

CASES = {
    "resnet50": ([{"batch": 1}, {"height": 160, "width": 192}], {"batch": 3, "height": 192, "width": 160}),
    "bert": ([{"batch": 1}, {"sequence": 32}], {"batch": 3, "sequence": 48}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_full_size_export_and_serve(tmp_path, name):
    from serving import start_server

    parity_shapes, served_sizes = CASES[name]
    b = build_builtin(name, size="full")
    repo = tmp_path / "models"
    report = export_model(b.module, b.example_inputs, name=name, repository=repo, input_names=b.input_names,
                          output_names=b.output_names, dynamic_axes=b.dynamic_axes, max_batch_size=4,
                          parity_shapes=parity_shapes, optimize=False)
    assert report.parity_ok and report.parity_max_abs_diff < 1e-4
    assert len(report.parity) == 1 + len(parity_shapes)
    assert report.nodes_exported >= report.nodes_simplified > 0
    with start_server(repo) as server:
        inputs = random_inputs(b.example_inputs, served_sizes, b.dynamic_axes, seed=11)
        want = torch_reference(b.module, inputs, keywords=True)
        got = infer_grpc(server.address, name, inputs, b.output_names)
        for o, w, g in zip(b.output_names, want, got):
            assert g.shape == w.shape, o
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4, err_msg=o)
