"""The engine process (docs/engine.md): ZeroMQ sockets, the turn (route, audit, send), PLC
feedback, the JSON control socket, metrics, configuration, and `launch` for starting one as a
child process. `run(config)` is `sorter run`."""
from sorter.engine.process import Engine, run

__all__ = ["Engine", "run"]
