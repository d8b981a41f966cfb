"""CPU ticks per thread of a process over a window: which threads (gRPC poller, handler threads, ORT's pool)
spend a server's CPU. Usage: python thread_cpu.py PID SECONDS (run while `tensorwire bench load` loads it)."""

import collections
import os
import sys
import time


def snap(pid: int) -> dict:
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s.rsplit(")", 1)[1].split()
        out[t] = (s[s.index("(") + 1:s.rindex(")")], int(fields[11]), int(fields[12]))
    return out


def main() -> None:
    pid, seconds = int(sys.argv[1]), float(sys.argv[2])
    before = snap(pid)
    time.sleep(seconds)
    after = snap(pid)
    ticks = collections.Counter()
    for t, (comm, user, system) in after.items():
        u0, s0 = before.get(t, (comm, 0, 0))[1:]
        ticks[f"{comm}:{t}"] += (user - u0) + (system - s0)
    print("total ticks", sum(ticks.values()))
    for name, n in ticks.most_common(16):
        print(n, name)


if __name__ == "__main__":
    main()
