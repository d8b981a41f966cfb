"""``--model-control-mode poll``: rescan the repository and load, reload or unload what changed.

Each scan takes a fingerprint (relative path, size, modification time of every file) of each model
directory. A model whose fingerprint differs from the one last acted on is looked at again after a
short settle wait; only if nothing changed meanwhile is it loaded, so a copy still being written is
left for the next scan (a partial file). A copy that stopped half-way settles too: its load fails, and a
failed load keeps the serving versions (tensorwire.server.repository); the next change is tried again, so
polling never stops after a failure (Triton's users' top complaint). The recipe that avoids partial
copies altogether, an atomic rename, is in docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tensorwire.errors import RequestError
from tensorwire.server.logs import event
from tensorwire.server.repository import ModelRepository

log = logging.getLogger("tensorwire.poller")
MAX_SETTLE_S = 1.0  # longest wait between the two looks at a changed model within one scan

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """Every file under ``model_dir`` as (path, size, mtime_ns); empty if the directory went away."""
    files = []
    try:
        for p in sorted(model_dir.rglob("*")):
            try:
                st = p.stat()
            except OSError:
                continue  # removed while we looked: the next scan sees the result
            if p.is_file():
                files.append((str(p.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(files)


class RepositoryPoller:
    """A daemon thread that applies the repository's changes every ``interval`` seconds."""

    def __init__(self, repository: ModelRepository, interval: float) -> None:
        self.repository = repository
        self.interval = interval
        self.settle = min(MAX_SETTLE_S, interval / 4)
        self._acted: dict[str, Fingerprint] = {}  # what each model's last load (or its attempt) saw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensorwire-poller", daemon=True)
        self.scans = 0

    def _current(self) -> dict[str, Fingerprint]:
        return {name: fingerprint(self.repository.root / name) for name in self.repository.model_names()}

    def prime(self) -> None:
        """Take the repository as the start-up load sees it (call right before ``load_all``)."""
        self._acted = self._current()

    def start(self) -> None:
        self._thread.start()
        event(log, "poll_started", "polling %s every %.1fs", self.repository.root, self.interval,
              interval_s=self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # never let one bad scan end polling
                log.exception("repository scan failed; polling goes on")

    def scan(self) -> None:
        """One pass: unload removed models, load new and changed ones whose files have settled."""
        current = self._current()
        for name in [n for n in self._acted if n not in current]:
            del self._acted[name]
            self._apply(name, unload=True)
        changed = {n: fp for n, fp in current.items() if self._acted.get(n) != fp}
        if changed and self._stop.wait(self.settle):
            return
        for name, fp in changed.items():
            if fingerprint(self.repository.root / name) != fp:
                event(log, "poll_partial", "model '%s' is still being written; it loads once its files stop "
                      "changing", name, model=name)
                continue
            self._acted[name] = fp
            self._apply(name, unload=False)
        self.scans += 1

    def _apply(self, name: str, unload: bool) -> None:
        """Load or unload ``name``; a failure is logged by the repository and kept as its state."""
        try:
            if unload:
                self.repository.unload(name)
            else:
                self.repository.load(name)
        except RequestError:
            pass  # the repository logged the reason and kept what serves
        except Exception:
            log.exception("model '%s': %s failed", name, "unload" if unload else "load")

