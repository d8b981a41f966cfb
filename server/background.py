"""What a server process runs beside its transports: the metrics endpoint, repository polling, and the memory
releaser that gives memory back after a burst.

``TensorwireServer`` calls :meth:`BackgroundServices.before_load` first (a taken metrics port fails the start
before any model loads), :meth:`after_listen` once it serves, :meth:`stop` when it drains and :meth:`close`
at the end.
"""

from __future__ import annotations

from collections.abc import Callable

from tensorwire.server.allocator import MemoryReleaser
from tensorwire.server.dataplane import InFlight
from tensorwire.server.metrics import MetricsEndpoint, start_metrics
from tensorwire.server.poller import RepositoryPoller
from tensorwire.server.repository import ModelRepository
from tensorwire.server.scratch import ScratchPool
from tensorwire.server.settings import ServerSettings


class BackgroundServices:
    def __init__(self, settings: ServerSettings, repository: ModelRepository, scratch: ScratchPool) -> None:
        self.settings = settings
        self.repository = repository
        self.scratch = scratch
        self.metrics: MetricsEndpoint | None = None
        self.poller: RepositoryPoller | None = None
        self.releaser: MemoryReleaser | None = None

    def before_load(self) -> None:
        """Open the metrics endpoint and take the repository's fingerprints the start-up load will see."""
        self.metrics = start_metrics(self.settings, self.repository.loaded)
        if self.settings.model_control_mode == "poll":
            self.poller = RepositoryPoller(self.repository, self.settings.repository_poll_secs)
            self.poller.prime()

    def after_listen(self, in_flight: InFlight, burst_over: tuple[Callable[[], None], ...] = ()) -> None:
        """Start polling, and releasing memory once ``in_flight`` shows a burst has ended (then each of
        ``burst_over`` is called: the transports' ``release_memory``)."""
        if self.poller is not None:
            self.poller.start()
        self.releaser = MemoryReleaser(self.scratch, in_flight.snapshot, burst_over=burst_over)
        self.releaser.start()

    def stop(self) -> None:
        """Stop polling (no load starts during a drain); the metrics endpoint answers until the end."""
        if self.poller is not None:
            self.poller.stop()

    def close(self) -> None:
        if self.releaser is not None:
            self.releaser.stop()
            self.releaser = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
