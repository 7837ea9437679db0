"""Test engines for scale-out: they show which device a page ran on (``module:Class`` names)."""

from __future__ import annotations

import os
import time

from fake_engines import EchoEngine

from ocrpress.document import PageImage, PageResult


class DeviceEchoEngine(EchoEngine):
    """EchoEngine that appends the CUDA_VISIBLE_DEVICES its process saw to each page's text."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        results = super().run(batch)
        for r in results:
            r.blocks[0].text += f" cvd={seen} pid={os.getpid()}"
        return results


class StreamEchoEngine(DeviceEchoEngine):
    """DeviceEchoEngine with a ``stream``: it takes every page fed to it while it "decodes"
    the oldest (``ECHO_DELAY`` seconds a page), so pages of later batches join those of
    earlier ones. Each page's text says how many pages the stream held when it finished."""

    def stream(self, feed, deliver, stop=None) -> None:  # type: ignore[no-untyped-def]
        from ocrpress.engines import STREAM_END

        held: list[tuple[int, PageImage]] = []
        ended = False
        while stop is None or not stop():
            while not ended:
                item = feed(not held)
                if item is STREAM_END:
                    ended = True
                elif item is None:
                    break
                else:
                    held.append(item)
            if not held:
                return
            open_now = len(held)
            key, page = held.pop(0)
            result = self.run([page])[0]
            result.blocks[0].text += f" open={open_now}"
            deliver(key, result)


class HalfDyingEngine(StreamEchoEngine):
    """On device 0 the worker dies at its first batch; on device 1 pages take 20 s each."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "0":
            time.sleep(0.3)
            os._exit(1)
        time.sleep(20 * len(batch))
        return super().run(batch)


def _refuse() -> None:
    raise TypeError("this object cannot be read back")


class _Unreadable:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_refuse, ())


class UnreadableEngine(DeviceEchoEngine):
    """Results that pickle in the worker but fail to unpickle in the main process."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        results = super().run(batch)
        results[0].notes.append(_Unreadable())  # type: ignore[arg-type]
        return results


class LoadFailEngine(DeviceEchoEngine):
    """On device 0 the engine fails to load; on device 1 it takes 20 s to load."""

    def __init__(self, opts=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(opts)
        device = os.environ.get("CUDA_VISIBLE_DEVICES")
        if device == "0":
            raise RuntimeError("no model here")
        if device == "1":  # not the main process, which plans with an instance of its own
            time.sleep(20)


class SlowLoadEngine(DeviceEchoEngine):
    """In a device worker the engine takes 30 s to load."""

    def __init__(self, opts=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(opts)
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            time.sleep(30)


class ForkThenDieEngine(DeviceEchoEngine):
    """On device 0 the worker forks a child that outlives it by a few seconds (holding the
    worker's end of its result pipe, as a fork-based helper pool would), then dies. The
    child's pid goes to the file ``FORK_PID_FILE`` names."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "0":
            pid = os.fork()
            if pid == 0:
                time.sleep(15)
                os._exit(0)
            with open(os.environ["FORK_PID_FILE"], "w") as f:
                f.write(str(pid))
            os._exit(1)
        time.sleep(20 * len(batch))
        return super().run(batch)


class Fatal(BaseException):
    """Not an Exception: what kills a device thread (a bug, not a page's fault)."""


class DyingStreamEngine(StreamEchoEngine):
    """Its first stream takes a page and then kills the thread it runs on; later ones work."""

    died = False

    def stream(self, feed, deliver, stop=None) -> None:  # type: ignore[no-untyped-def]
        if not self.died:
            self.died = True
            feed(True)
            raise Fatal("device thread killed")
        super().stream(feed, deliver, stop)


class PageAtATimeEngine(DeviceEchoEngine):
    """A stream that takes a page only when it starts on it, as DeepSeek's does once its slots
    and preparation queue are full; a page takes ``SLOW_DEVICE_DELAY`` seconds on device 0."""

    def stream(self, feed, deliver, stop=None) -> None:  # type: ignore[no-untyped-def]
        from ocrpress.engines import STREAM_END

        slow = os.environ.get("CUDA_VISIBLE_DEVICES") == "0"
        while stop is None or not stop():
            item = feed(True)
            if item is STREAM_END:
                return
            key, page = item
            if slow:
                time.sleep(float(os.environ.get("SLOW_DEVICE_DELAY", "1")))
            deliver(key, self.run([page])[0])
