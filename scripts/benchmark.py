#!/usr/bin/env python
"""Headless benchmarks: ``python scripts/benchmark.py ultrasound [options]``.

The same as ``sonogym bench ultrasound``; see ``sonogym bench ultrasound --help``.
"""

import sys

from sonogym.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
