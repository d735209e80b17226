"""Run one crossderm command and SIGKILL it at a chosen point: the ``n``-th ``os.replace`` (every atomic write and
folder replacement goes through it), or after ``seconds``. Used by the fault-injection tests and the kill sweep;
``python kill_runner.py replace N -- crossderm-args...``, ``time S -- ...``, or ``count 0 -- ...`` (no kill: prints
each ``os.replace`` call's destination, ``os.replace #I -> DST``, and last their number, i.e. the kill points).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    mode, value, separator, *command = argv
    if separator != "--":
        raise SystemExit("usage: kill_runner.py replace N|time S|count 0 -- crossderm args...")
    if mode in ("replace", "count"):
        target, calls = int(value), [0]
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls[0] += 1
            if mode == "replace" and calls[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "count":  # each kill point's destination, for the sweep's labels
                print(f"os.replace #{calls[0]} -> {os.fspath(dst)}", file=sys.stderr, flush=True)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
        if mode == "count":  # how many kill points a command has: printed last on stderr
            import atexit

            atexit.register(lambda: print(f"os.replace calls: {calls[0]}", file=sys.stderr))
    elif mode == "time":
        timer = threading.Timer(float(value), lambda: os.kill(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from crossderm.cli import main as crossderm_main

    return crossderm_main(command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
