"""Does the extension count typed contents without the GIL? (issue 11, the p99 item)

    python bench/results/memory/gil_probe.py

Decodes a request with 6x10^7 one-byte int64 varints under a check that refuses it (what a hostile
request costs before its RESOURCE_EXHAUSTED), while another thread wakes every millisecond. Before the
change the other thread woke once per walk (the GIL was held throughout); after it, about once per
millisecond of the walk. Figures: gil_probe.md.
"""

import contextlib
import threading
import time

from tensorwire.bench.memory import varint
from tensorwire.fastpath import load_codec


def ld(field: int, payload: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def main() -> None:
    buf = ld(1, b"m") + ld(5, ld(1, b"in") + ld(5, ld(3, b"\x01" * 60_000_000)))
    codec = load_codec("ext")
    ticks, stop = [0], threading.Event()

    def wake() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    def refuse(counted) -> None:
        raise ValueError(counted)

    waker = threading.Thread(target=wake)
    waker.start()
    for _ in range(3):
        ticks[0] = 0
        start = time.perf_counter()
        with contextlib.suppress(ValueError):
            codec.decode_infer_request(buf, refuse)
        print(f"count 6e7 varints: {(time.perf_counter() - start) * 1e3:.0f} ms, "
              f"other thread woke {ticks[0]} times meanwhile")
    stop.set()
    waker.join()


if __name__ == "__main__":
    main()
