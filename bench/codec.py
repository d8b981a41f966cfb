"""Codec micro-benchmark: decode and encode time per request for the Cython extension, the
pure-Python twin and the generated protobuf classes, at payloads from 16 B to 16 MB.

``tensorwire bench codec [--out DIR] [--quick]`` prints a markdown table and writes JSON.
Each figure is the median of repeated timings taken in one process, side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tensorwire import proto as pb
from tensorwire.bench import timing
from tensorwire.bench.report import write_rows
from tensorwire.fastpath import load_codec
from tensorwire.fastpath import twin as twin_module
from tensorwire.proto.messages import InferResponse, OutputTensor

PAYLOADS = {"16 B": 16, "4 KB": 4096, "600 KB": 3 * 224 * 224 * 4, "16 MB": 16 * 2**20}


def request_bytes(nbytes: int) -> bytes:
    """A ModelInferRequest with one raw FP32 input of ``nbytes`` and the usual envelope fields."""
    req = pb.ModelInferRequest(model_name="resnet50", model_version="1", id="req-1")
    req.parameters["priority"].int64_param = 1
    t = req.inputs.add(name="pixel_values", datatype="FP32", shape=[1, nbytes // 4])
    t.parameters["binary_data_size"].int64_param = nbytes
    req.outputs.add(name="logits")
    req.raw_input_contents.append(np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32).tobytes())
    return req.SerializeToString()


def response_of(nbytes: int) -> InferResponse:
    data = np.random.default_rng(1).standard_normal(nbytes // 4).astype(np.float32).reshape(1, -1)
    return InferResponse("resnet50", "1", "req-1", [OutputTensor("logits", "FP32", data.shape, data)])


def protobuf_parse_and_read(buf: bytes) -> None:
    """What a server built on the generated classes does before it can use a request: parse, then read
    the fields it needs (upb copies a bytes field out of the message when it is read)."""
    req = pb.ModelInferRequest.FromString(buf)
    _ = (req.model_name, req.model_version, req.id, dict(req.parameters))
    for t in req.inputs:
        _ = (t.name, t.datatype, tuple(t.shape), dict(t.parameters))
    for o in req.outputs:
        _ = o.name
    for raw in req.raw_input_contents:
        np.frombuffer(raw, dtype=np.float32)


def _median_us(fn, min_time_s: float, max_iter: int) -> float:
    loop = timing.LoopSettings(warmup=1, warmup_time_s=0.0, min_iters=5, min_time_s=min_time_s, max_iters=max_iter,
                        max_time_s=max(min_time_s, 1.0) * 4)
    return float(np.median(timing.measure(fn, loop))) * 1e6


def measure(quick: bool = False) -> list[dict]:
    ext, twin = load_codec("ext"), load_codec("twin")
    min_time, max_iter = (0.05, 200) if quick else (0.5, 5000)
    rows = []
    for label, n in PAYLOADS.items():
        buf = request_bytes(n)
        resp = response_of(n)
        msg = twin_module.build_infer_response(resp)
        row = {
            "payload": label,
            "request_bytes": len(buf),
            "decode_ext_us": _median_us(lambda b=buf: ext.decode_infer_request(b), min_time, max_iter),
            "decode_twin_us": _median_us(lambda b=buf: twin.decode_infer_request(b), min_time, max_iter),
            "decode_protobuf_us": _median_us(lambda b=buf: pb.ModelInferRequest.FromString(b), min_time, max_iter),
            "decode_protobuf_read_us": _median_us(lambda b=buf: protobuf_parse_and_read(b), min_time, max_iter),
            "encode_ext_us": _median_us(lambda r=resp: ext.encode_infer_response(r), min_time, max_iter),
            "encode_twin_us": _median_us(lambda r=resp: twin.encode_infer_response(r), min_time, max_iter),
            "encode_protobuf_us": _median_us(lambda m=msg: m.SerializeToString(), min_time, max_iter),
        }
        row["decode_protobuf_over_ext"] = row["decode_protobuf_us"] / row["decode_ext_us"]
        row["decode_protobuf_read_over_ext"] = row["decode_protobuf_read_us"] / row["decode_ext_us"]
        row["encode_twin_over_ext"] = row["encode_twin_us"] / row["encode_ext_us"]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| payload | decode ext (us) | decode twin (us) | protobuf FromString (us) | FromString / ext | "
             "protobuf parse+read (us) | parse+read / ext | encode ext (us) | encode twin (us) | "
             "SerializeToString (us) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['payload']} | {r['decode_ext_us']:.2f} | {r['decode_twin_us']:.2f} | "
                     f"{r['decode_protobuf_us']:.2f} | {r['decode_protobuf_over_ext']:.1f}x | "
                     f"{r['decode_protobuf_read_us']:.2f} | {r['decode_protobuf_read_over_ext']:.1f}x | "
                     f"{r['encode_ext_us']:.2f} | {r['encode_twin_us']:.2f} | {r['encode_protobuf_us']:.2f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``tensorwire bench codec``."""
    p.add_argument("--out", type=Path, help="directory for codec.json and codec.md (default: print only)")
    p.add_argument("--quick", action="store_true", help="few iterations (CI)")


def run(args: argparse.Namespace) -> int:
    """``tensorwire bench codec``."""
    rows = measure(args.quick)
    table = markdown(rows)
    print(table)
    if args.out:
        write_rows(rows, table, args.out, "codec")
    return 0
