"""What a server process runs beside gRPC for its operators: the metrics endpoint and repository polling.

``TensorwireServer`` calls :meth:`Operations.before_load` first (a taken metrics port fails the start
before any model loads), :meth:`after_listen` once it serves, and :meth:`stop` when it drains.
"""

from __future__ import annotations

from tensorwire.server.metrics import MetricsEndpoint, start_metrics
from tensorwire.server.poller import RepositoryPoller
from tensorwire.server.repository import ModelRepository
from tensorwire.server.settings import ServerSettings


class Operations:
    def __init__(self, settings: ServerSettings, repository: ModelRepository) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics: MetricsEndpoint | None = None
        self.poller: RepositoryPoller | None = None

    def before_load(self) -> None:
        """Open the metrics endpoint and take the repository's fingerprints the start-up load will see."""
        self.metrics = start_metrics(self.settings, self.repository.loaded)
        if self.settings.model_control_mode == "poll":
            self.poller = RepositoryPoller(self.repository, self.settings.repository_poll_secs)
            self.poller.prime()

    def after_listen(self) -> None:
        if self.poller is not None:
            self.poller.start()

    def stop(self) -> None:
        """Stop polling (no load starts during a drain); the metrics endpoint answers until the end."""
        if self.poller is not None:
            self.poller.stop()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
