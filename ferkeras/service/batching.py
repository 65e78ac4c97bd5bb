"""Micro-batching: the face crops of concurrent requests scored in one onnxruntime call.

One onnxruntime call on 16 faces costs far less than 16 calls on one face each (the per-call
overhead and the small matrix products dominate at this model size), so requests that arrive
together share calls. Each request hands its crops to `MicroBatcher.score` and awaits them; one
collector task takes what is queued, waits up to `max_wait_s` for more while the batch is under
`max_faces`, runs the model once in its own thread (the event loop keeps accepting requests) and
gives every request its rows back. Requests that arrive while the model runs are queued and make
up the next batch, so under load batches grow on their own and the wait is only paid when idle.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """Score gray 64x64 face crops of many requests together with `probabilities(faces) -> (N, 8)`."""

    def __init__(self, probabilities, max_faces=64, max_wait_s=0.005):
        self.probabilities = probabilities
        self.max_faces = max_faces
        self.max_wait_s = max_wait_s
        self.queue = None
        self.collector = None
        # One thread: onnxruntime spreads a call over the cores itself, calls need not overlap.
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.calls = 0  # onnxruntime calls and faces scored, for /health and the load test
        self.faces = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.collector = asyncio.create_task(self._collect())

    async def stop(self):
        if self.collector:
            self.collector.cancel()
            await asyncio.gather(self.collector, return_exceptions=True)
        self.model_thread.shutdown(wait=True)

    async def score(self, crops):
        """(N, 8) probabilities of one request's crops, scored in a batch with other requests'."""
        if len(crops) == 0:
            return np.zeros((0, 8), np.float32)
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((np.asarray(crops), done))
        return await done

    async def _collect(self):
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            count = len(waiting[0][0])
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_faces:
                try:
                    item = self.queue.get_nowait() if self.queue.qsize() else \
                        await asyncio.wait_for(self.queue.get(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                waiting.append(item)
                count += len(item[0])
            await self._run(loop, waiting)

    async def _run(self, loop, waiting):
        faces = np.concatenate([crops for crops, _ in waiting])
        try:
            probabilities = await loop.run_in_executor(self.model_thread, self.probabilities, faces)
        except Exception as exc:  # a model failure fails the requests of this batch, not the service
            for _, done in waiting:
                if not done.done():
                    done.set_exception(exc)
            return
        self.calls += 1
        self.faces += len(faces)
        offset = 0
        for crops, done in waiting:
            if not done.done():  # a client that went away has cancelled its future
                done.set_result(probabilities[offset:offset + len(crops)])
            offset += len(crops)
