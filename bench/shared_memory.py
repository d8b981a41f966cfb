"""What the shared-memory copies cost: outputs (run + one copy into the region, against IO binding of the
output to an mmap'd buffer) and inputs (preadv, a plain memcpy from a mapping, the server's guarded copy).

The server never hands mapped client memory to ONNX Runtime (a client can shrink its object, and a touch
past the new end is SIGBUS), so it copies each tensor once, through its SIGBUS-guarded mapping
(fastpath/_mapped.pyx; docs/shared-memory.md). IO binding would let ONNX Runtime write straight into a
mapping; this measures what that would save, in process, for the 3x224x224 conv model's [B,16] output and
for a 600 KB output, and what each way of copying an input costs. ``tensorwire bench shared-memory``
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile

import numpy as np

from tensorwire.bench import timing


def conv_model(batch: int | str = "b"):
    """The conv model of issue 12: Conv 3->16 3x3 pad 1, ReLU, GlobalAveragePool, Flatten; [B,3,224,224] -> [B,16]."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])],
                              initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def relu_model():
    """A 600 KB output: ReLU over [B,3,224,224] FP32."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 224, 224])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _medians_us(fns: dict, n: int, rounds: int = 5) -> dict:
    """Median microseconds of each function, measured in ``rounds`` alternating blocks of ``n / rounds`` calls,
    so that a noisy neighbour on the machine weighs on every figure alike."""
    samples: dict = {name: [] for name in fns}
    per = max(n // rounds, 1)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += timing.measure(fn, timing.fixed_count(per, warmup=max(per // 10, 3)))
    return {name: float(np.median(v)) * 1e6 for name, v in samples.items()}


def _case(session, x: np.ndarray, out_shape: tuple, n: int) -> dict:
    """Median microseconds of: run alone; the server's copy into the region alone (fstat + guarded copy, or
    pwrite without the extension); run + that copy; IO binding bound once (the output buffer never changes:
    the best case); IO binding made and bound per call (what a server must do, since each request names its
    own region and offset)."""
    size = int(np.prod(out_shape)) * 4
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        os.ftruncate(f.fileno(), size)
        fd = f.fileno()
        mapping = mmap.mmap(fd, size)
        out = np.frombuffer(mapping, np.float32, int(np.prod(out_shape))).reshape(out_shape)
        ptr = out.ctypes.data
        write = _ServerWrite(fd, size)

        def run_copy():
            y = session.run(None, {"x": x})[0]
            write(memoryview(np.ascontiguousarray(y).reshape(-1)).cast("B"))

        binding = session.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y", "cpu", 0, np.float32, list(out_shape), ptr)

        def bound_once():
            session.run_with_iobinding(binding)

        def rebound():
            b = session.io_binding()
            b.bind_cpu_input("x", x)
            b.bind_output("y", "cpu", 0, np.float32, list(out_shape), ptr)
            session.run_with_iobinding(b)

        y = session.run(None, {"x": x})[0]
        row = {"output_bytes": size, **_medians_us({
            "run_us": lambda: session.run(None, {"x": x}),
            "copy_us": lambda: write(memoryview(y.reshape(-1)).cast("B")),
            "run_copy_us": run_copy,
            "binding_once_us": bound_once,
            "binding_rebound_us": rebound}, n)}
        want = session.run(None, {"x": x})[0]
        rebound()
        assert np.array_equal(out, want), "IO binding wrote something else"
        del out
        mapping.close()
        write.close()
    return row


class _ServerWrite:
    """What the server does with an output's bytes: fstat, then the guarded copy (pwrite without it)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.guarded = fd, _guarded(fd, size)

    def __call__(self, data: memoryview) -> None:
        if self.guarded is not None:
            self.guarded.object_size()
            self.guarded.write_from(0, data)
        else:
            os.fstat(self.fd)
            os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        if self.guarded is not None:
            self.guarded.close()


def measure(n: int = 400) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    rows = []
    rng = np.random.default_rng(0)
    for name, build, batches in (("conv [B,16]", conv_model, (1, 8)), ("relu 600 KB", relu_model, (1,))):
        session = ort.InferenceSession(build().SerializeToString(), options, providers=["CPUExecutionProvider"])
        for b in batches:
            x = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
            out_shape = session.run(None, {"x": x})[0].shape
            rows.append({"case": f"{name} b={b}", **_case(session, x, out_shape, n)})
    return rows


def _read_case(size: int, n: int) -> dict:
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        fd = f.fileno()
        os.ftruncate(fd, size)
        os.pwrite(fd, np.random.default_rng(0).bytes(size), 0)
        mapping = mmap.mmap(fd, size)
        reused = np.empty(size, np.uint8)

        def fresh():
            buf = np.empty(size, np.uint8)
            os.preadv(fd, [buf], 0)

        def copy_out():  # the view is released when the call ends, so the mapping can close afterwards
            np.copyto(reused, np.frombuffer(mapping, np.uint8))

        guarded = _guarded(fd, size)
        fns = {"pread_fresh_us": fresh, "pread_reused_us": lambda: os.preadv(fd, [reused], 0),
               "mmap_memcpy_us": copy_out, "pwrite_us": lambda: os.pwrite(fd, reused, 0)}
        if guarded is not None:  # what the server does: the size check, then the guarded copy
            fns["guarded_read_us"] = lambda: (guarded.object_size(), guarded.read_into(0, reused))
            fns["guarded_write_us"] = lambda: (guarded.object_size(), guarded.write_from(0, reused))
        row = _medians_us(fns, n)
        mapping.close()
        if guarded is not None:
            guarded.close()
    return row


def _guarded(fd: int, size: int):
    """The server's guarded mapping of the object (fastpath/_mapped.pyx), or None where it is not built."""
    try:
        from tensorwire.fastpath._mapped import Mapping
    except ImportError:
        return None
    return Mapping(fd, 0, size)


def read_costs(n: int = 400) -> list[dict]:
    """A tensor's copy out of (and into) a region: preadv into a fresh buffer, into a reused one, a plain memcpy
    out of a mapping, pwrite, and the server's guarded copies (fstat + memcpy under the SIGBUS guard), for
    600 KB and 4.8 MB."""
    return [{"case": label, **_read_case(size, n)}
            for label, size in (("600 KB (3x224x224 FP32)", 3 * 224 * 224 * 4),
                                ("4.8 MB (batch 8)", 8 * 3 * 224 * 224 * 4))]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Prints a markdown table (bench/results/shared_memory/)."""
    p.add_argument("--iterations", type=int, default=400, metavar="N",
                   help="timed calls per figure, after a tenth as many warm-up calls (default: 400)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench shared-memory``."""
    print("| case | output | run (us) | one copy alone (us) | run + one copy (us) | IO binding, bound once (us) | "
          "IO binding, bound per call (us) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in measure(args.iterations):
        print(f"| {r['case']} | {r['output_bytes']} B | {r['run_us']:.1f} | {r['copy_us']:.1f} | "
              f"{r['run_copy_us']:.1f} | {r['binding_once_us']:.1f} | {r['binding_rebound_us']:.1f} |")
    print()
    print("| copy | preadv, fresh buffer (us) | preadv, reused buffer (us) | memcpy from a mapping (us) | "
          "pwrite (us) | guarded read (us) | guarded write (us) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in read_costs(args.iterations):
        print(f"| {r['case']} | {r['pread_fresh_us']:.1f} | {r['pread_reused_us']:.1f} | {r['mmap_memcpy_us']:.1f} | "
              f"{r['pwrite_us']:.1f} | {r.get('guarded_read_us', float('nan')):.1f} | "
              f"{r.get('guarded_write_us', float('nan')):.1f} |")
    return 0
