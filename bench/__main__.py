import sys

from bench import SUITES, main

# `python -m bench engine` (bench/engine.py). Registered here so that `python -m bench` knows
# it; its natural home is SUITES in bench/__init__.py (one line, then drop this one).
SUITES.setdefault("engine", ("bench.engine", "end-to-end latency and sustained rate of the "
                                             "engine subprocess vs a bare ZeroMQ relay"))

sys.exit(main())
