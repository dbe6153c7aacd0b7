"""Prometheus text exposition (format 0.0.4) of requests, latency and batch sizes; no dependency."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {n}'
            for edge, n in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.total}")
        return out


class Metrics:
    """Counters and histograms, thread-safe; ``render()`` gives the /metrics body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batches: dict[str, _Histogram] = {}
        self.rejected: dict[str, int] = defaultdict(int)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        with self._lock:
            self.batches.setdefault(model, _Histogram(BATCH_BUCKETS)).observe(size)

    def observe_rejected(self, model: str) -> None:
        with self._lock:
            self.rejected[model] += 1

    def render(self, queue_depths: dict[str, int]) -> str:
        with self._lock:
            lines = _header("llmc_requests_total", "counter", "HTTP requests by route and status")
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(
                    f'llmc_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}'
                )
            lines += _header("llmc_request_seconds", "histogram", "request latency in seconds")
            for route, h in sorted(self.latency.items()):
                lines += h.lines("llmc_request_seconds", f'route="{route}"')
            lines += _header("llmc_batch_size", "histogram", "items per model call")
            for model, h in sorted(self.batches.items()):
                lines += h.lines("llmc_batch_size", f'model="{model}"')
            lines += _header("llmc_rejected_total", "counter", "requests refused: queue full")
            for model, n in sorted(self.rejected.items()):
                lines.append(f'llmc_rejected_total{{model="{model}"}} {n}')
            lines += _header("llmc_queue_depth", "gauge", "requests waiting per model")
            for model, n in sorted(queue_depths.items()):
                lines.append(f'llmc_queue_depth{{model="{model}"}} {n}')
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
