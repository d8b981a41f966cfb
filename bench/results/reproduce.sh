#!/usr/bin/env bash
# Re-run the committed results on your machine (from the repository root, with tensorwire[cpu,export,bench]
# installed). Close other heavy programs first: absolute times only mean something on a quiet machine.
# Usage: bench/results/reproduce.sh [compare] [load] [overhead] [hotpath] [memory] [cpu] [triton-perf] [http]
#   (default: the first five; cpu takes ~4 min, triton-perf needs bash bench/perf_analyzer_env.sh first)
set -euo pipefail
OUT=${OUT:-bench/results}
STEPS=" ${*:-compare load overhead hotpath memory} "

# 1. eager vs torch.compile vs ONNX Runtime, full-size models, batch 1 and 8 (about 15 min on 2 cores)
if [[ $STEPS == *" compare "* ]]; then
  tensorwire bench compare --models mlp,resnet50,distilbert,bert --batch 1,8 --out "$OUT/compare"
fi

if [[ $STEPS == *" load "* || $STEPS == *" overhead "* ]]; then
  # a real `tensorwire serve` of the built-in MLP on a free loopback port
  WORK=$(mktemp -d)
  tensorwire export mlp --repository "$WORK/models" > "$WORK/export.log"
  tensorwire serve --model-repository "$WORK/models" --host 127.0.0.1 --grpc-port 0 --port-file "$WORK/port" \
    > "$WORK/serve.log" 2>&1 &
  SERVER=$!
  trap 'kill -TERM $SERVER; wait $SERVER' EXIT
  until [ -s "$WORK/port" ]; do sleep 0.2; done
  # 2. load test: closed loop at concurrency 1, 8, 32; open loop at 500 requests/s; 10 s per level
  if [[ $STEPS == *" load "* ]]; then
    tensorwire bench load --target "127.0.0.1:$(cat "$WORK/port")" --model mlp --concurrency 1,8,32 --rate 500 \
      --duration 10 --out "$OUT/load"
  fi
  # 3. the server's overhead per request over in-process ONNX Runtime, beside a bare grpcio echo
  if [[ $STEPS == *" overhead "* ]]; then
    tensorwire bench overhead --model mlp --model-repository "$WORK/models" --out "$OUT/overhead"
  fi
fi

# 4. the hot path: codec micro-benchmark, then the server vs its twin vs a bare grpcio echo, as it starts by
#    default and pinned to CPU 1 (--cpu-affinity; the client and the in-process baseline stay unpinned)
if [[ $STEPS == *" hotpath "* ]]; then
  tensorwire bench codec --out "$OUT/fastpath"
  tensorwire bench fastpath --requests 4000 --rounds 10 --out "$OUT/fastpath"
  tensorwire bench fastpath --requests 4000 --rounds 10 --server-arg=--cpu-affinity=1 --out "$OUT/fastpath_pinned"
fi

# 6. memory per request: each amplification case on a fresh server vs bare grpcio receiving the same bytes,
#    and a small-request client's p99 while the case is sent
if [[ $STEPS == *" memory "* ]]; then
  tensorwire bench memory --p99 --out "$OUT/memory"
fi

# 11. server CPU per request beside the grpcio echo (spinning off vs on, pool of 2 fixed), unary and streaming;
#     perf_analyzer plain gRPC vs system shared memory vs streaming
if [[ $STEPS == *" cpu "* ]]; then
  tensorwire bench cpu --variant pool2="--intra-op-threads 2" \
    --variant pool2-spinning="--intra-op-threads 2 --intra-op-spinning" --rounds 3 --duration 2 --out "$OUT/cpu/spinning"
  tensorwire bench cpu --variant default= --variant spinning=--intra-op-spinning --variant t1="--intra-op-threads 1" \
    --rounds 3 --duration 2 --out "$OUT/cpu/after"
fi
if [[ $STEPS == *" triton-perf "* ]]; then
  tensorwire bench triton-perf --perf-analyzer "${PERF_ANALYZER:-/work/venv-pa/bin/perf_analyzer}" --rounds 4 \
    --out "$OUT/perf_analyzer"
fi
if [[ $STEPS == *" http "* ]]; then  # HTTP/REST: uvicorn vs granian beside gRPC, then perf_analyzer -i http vs -i grpc
  tensorwire bench http-servers --requests 2000 --concurrency 1 8 --out "$OUT/http"
  tensorwire bench http-servers --skip-engines --perf-analyzer "${PERF_ANALYZER:-/work/venv-pa/bin/perf_analyzer}" \
    --rounds 5 --interval-ms 2000 --out "$OUT/http"
fi
