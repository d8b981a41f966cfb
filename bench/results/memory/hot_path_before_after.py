"""The inference hot path in-process, before and after issue 11 item 2 (the figures in hotpath.md).

before: decode -> model lookup -> prepare_fast; after: peek -> model lookup -> decode(check) -> prepare_fast,
on a raw FP32 request of 1x16 and of 1x3x224x224. Build the old extension from the parent commit and run
both, alternating:

    git archive 88a24eb | tar -x -C /tmp/before && (cd /tmp/before && python setup.py build_ext --inplace)
    for i in 1 2 3 4 5; do for v in before after; do
      python bench/results/memory/hot_path_before_after.py $v /tmp/before/fastpath/_wire.*.so fastpath/_wire.*.so
    done; done
"""

import importlib.util
import json
import sys
import time

import numpy as np

which, before_so, after_so = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("tensorwire.fastpath._wire", before_so if which == "before" else after_so)
w = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = w
spec.loader.exec_module(w)

from tensorwire import proto as pb  # noqa: E402  (after the chosen extension is in sys.modules)
from tensorwire.proto.datatypes import DATATYPES  # noqa: E402
from tensorwire.server.model_config import ModelSpec, TensorSpec  # noqa: E402
from tensorwire.server.validation import DEFAULT_LIMITS, FastLane, contents_check, prepare_fast  # noqa: E402


def case(shape):
    spec = ModelSpec(name="m", max_batch_size=8, inputs=[TensorSpec("x", DATATYPES["FP32"], shape[1:])],
                     outputs=[TensorSpec("y", DATATYPES["FP32"], (10,))], config=pb.ModelConfig())
    msg = pb.ModelInferRequest(model_name="m", id="42")
    msg.inputs.add(name="x", datatype="FP32", shape=shape)
    msg.raw_input_contents.append(np.zeros(shape, np.float32).tobytes())
    return spec, msg.SerializeToString()


models = {}
out = {}
for label, shape in (("small_1x16", (1, 16)), ("image_1x3x224x224", (1, 3, 224, 224))):
    spec, buf = case(shape)
    models["m"] = (FastLane.of(spec), contents_check(spec, DEFAULT_LIMITS))

    def flow_before(buf=buf):
        r = w.decode_infer_request(buf)
        lane, _ = models[r.model_name]
        return prepare_fast(r, lane)

    def flow_after(buf=buf):
        name, _ = w.peek_infer_request(buf)
        lane, check = models[name]
        return prepare_fast(w.decode_infer_request(buf, check), lane)

    flow = flow_before if which == "before" else flow_after
    for name, fn in (("decode", lambda buf=buf: w.decode_infer_request(buf)), ("flow", flow)):
        assert fn() is not None
        runs = []
        for _ in range(15):
            n = 5000
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter_ns() - t0) / n / 1000)
        out[f"{label}_{name}_us"] = round(min(runs), 3)
print(json.dumps({which: out}))
