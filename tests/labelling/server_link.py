"""Reading the tokened link a `rlhfkit label serve` subprocess prints."""

import queue
import subprocess
import threading
import time


def wait_for_link(process: subprocess.Popen, timeout_s: float = 60) -> str:
    """The link the server prints (`labelling page: URL`). A thread reads the output, so that a
    server that hangs fails the test instead of hanging it."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {process.stderr.read()}") from None
            continue
        if line.startswith("labelling page: "):
            return line.split(": ", 1)[1].strip()
    process.kill()
    raise AssertionError(f"rlhfkit label serve printed no link within {timeout_s:.0f} s")
