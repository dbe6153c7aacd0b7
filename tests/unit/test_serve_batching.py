"""Dynamic batching: requests that arrive together share a model call; a full queue is a 503."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="needs the dev extra (httpx)")

from serve_helpers import running  # noqa: E402

from llm_compression.errors import InputError  # noqa: E402
from llm_compression.serve import ServeConfig, create_app  # noqa: E402
from llm_compression.serve.batching import Batcher, QueueFull  # noqa: E402


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_jobs_that_arrive_together_share_one_call_and_keep_their_order():
    calls = []

    def fn(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        b = Batcher("t", fn, max_batch=8, max_wait=0.05)
        out = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(3)))
        await b.close()
        return out

    assert run(main()) == [[0, 1000], [10, 1010], [20, 1020]]
    assert calls == [[0, 100, 1, 101, 2, 102]]


def test_a_batch_never_exceeds_max_batch():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return items

    async def main():
        b = Batcher("t", fn, max_batch=4, max_wait=0.05)
        out = await asyncio.gather(*(b.submit([i] * 3) for i in range(5)))
        await b.close()
        return out

    assert run(main()) == [[i] * 3 for i in range(5)]
    assert max(sizes) <= 4 and sum(sizes) == 15


def test_compute_runs_off_the_event_loop():
    loop_thread = []

    def fn(items):
        loop_thread.append(threading.current_thread().name)
        return items

    async def main():
        b = Batcher("t", fn, max_wait=0)
        await b.submit([1])
        await b.close()

    run(main())
    assert loop_thread[0].startswith("batch-t") and loop_thread[0] != threading.main_thread().name


def test_one_bad_input_fails_only_its_own_request():
    def fn(items):
        if "bad" in items:
            raise InputError("bad input")
        return items

    async def main():
        b = Batcher("t", fn, max_batch=8, max_wait=0.05)
        out = await asyncio.gather(b.submit(["a"]), b.submit(["bad"]), b.submit(["c"]),
                                   return_exceptions=True)  # fmt: skip
        await b.close()
        return out

    a, bad, c = run(main())
    assert a == ["a"] and c == ["c"] and isinstance(bad, InputError)


def test_full_queue_raises_queue_full():
    gate = threading.Event()

    def fn(items):
        gate.wait(5)
        return items

    async def main():
        b = Batcher("t", fn, max_batch=1, max_wait=0, max_queue=2)
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # the worker holds job 0; the queue takes two more
        waiting = [asyncio.ensure_future(b.submit([i])) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit([3])
        gate.set()
        out = await asyncio.gather(first, *waiting)
        await b.close()
        return out

    assert run(main()) == [[0], [1], [2]]


class SlowProvider:
    """Stands in for the provider: records batch sizes, takes ``delay`` per call."""

    dimension = 4

    def __init__(self, delay: float) -> None:
        self.delay, self.sizes = delay, []

    def encode(self, texts, **_):
        self.sizes.append(len(texts))
        time.sleep(self.delay)
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def app_with(provider, **cfg):
    app = create_app(ServeConfig(**cfg))
    app.app.state.engines.provider = provider  # the ASGI app behind the Guard middleware
    return app


def post_many(url: str, n: int) -> list[httpx.Response]:
    async def main():
        async with httpx.AsyncClient(timeout=30) as c:
            jobs = [c.post(url + "/v1/embeddings", json={"input": f"text {i}"}) for i in range(n)]
            return await asyncio.gather(*jobs)

    return asyncio.run(main())


def test_concurrent_http_requests_are_batched():
    provider = SlowProvider(0.05)
    with running(app_with(provider, max_batch=16, max_wait=0.02)) as url:
        responses = post_many(url, 12)
        metrics = httpx.get(url + "/metrics").text
    assert all(r.status_code == 200 for r in responses)
    assert max(provider.sizes) > 1 and sum(provider.sizes) == 12
    assert 'llmc_batch_size_count{model="text"}' in metrics


def test_full_queue_is_503_with_retry_after():
    provider = SlowProvider(0.3)
    with running(app_with(provider, max_batch=1, max_wait=0, max_queue=2)) as url:
        responses = post_many(url, 8)
        metrics = httpx.get(url + "/metrics").text
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "queue_full"
    assert 'llmc_rejected_total{model="text"}' in metrics


def test_request_past_the_timeout_is_504():
    with running(app_with(SlowProvider(1.0), request_timeout=0.2)) as url:
        r = httpx.post(url + "/v1/embeddings", json={"input": "slow"}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
