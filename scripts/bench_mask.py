"""Unmasking throughput: geo_ws's C extension against the pure-Python fallback.

    python scripts/bench_mask.py                 # 125 B, 4 KiB, 64 KiB, 1 MiB
    python scripts/bench_mask.py --sizes 125 8192 --repeat 9

Each figure is the best of ``--repeat`` timings of about ``--bytes`` bytes unmasked
(MB = 10**6 bytes), so that a busy machine slows fewer of them. The C column is empty when
the extension was not built (``MASK_IMPLEMENTATION == "python"``).
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

from geo_ws.protocol import frames

SIZES = (125, 4096, 65536, 1 << 20)


def throughput(
    function: Callable[[bytes, bytes], bytes], size: int, total: int, repeat: int
) -> float:
    """Best rate of ``function`` unmasking ``size``-byte payloads, in MB/s.

    Args:
        function: an ``apply_mask`` implementation.
        size: the payload length in bytes.
        total: about how many bytes one timing unmasks.
        repeat: how many timings to take the best of.

    Returns:
        Megabytes (10**6 bytes) per second.
    """
    data = os.urandom(size)
    mask = os.urandom(4)
    number = max(1, total // size)
    best = min(timeit.repeat(lambda: function(data, mask), number=number, repeat=repeat))
    return size * number / best / 1e6


def main() -> None:
    """Print one line per payload size: the C and Python rates and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="payload sizes")
    parser.add_argument("--bytes", type=int, default=1 << 24, help="bytes per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per figure")
    args = parser.parse_args()

    c_mask = frames._apply_mask_c
    print(f"apply_mask in use: {frames.MASK_IMPLEMENTATION}")
    print(f"{'size':>9} {'C MB/s':>10} {'Python MB/s':>12} {'C/Python':>9}")
    for size in args.sizes:
        python = throughput(frames._apply_mask_python, size, args.bytes, args.repeat)
        if c_mask is None:
            print(f"{size:>9} {'-':>10} {python:>12,.0f} {'-':>9}")
            continue
        c = throughput(c_mask, size, args.bytes, args.repeat)
        print(f"{size:>9} {c:>10,.0f} {python:>12,.0f} {c / python:>8,.0f}x")


if __name__ == "__main__":
    main()
