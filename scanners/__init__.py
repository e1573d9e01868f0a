"""Scanner drivers: TCP telegrams from barcode scanners and camera tunnels in, SCAN messages to
the engine out (docs/scanners.md).

- `scanners.framing`: the sans-IO core: presets (`load_format`), `FrameSplitter`,
  `parse_frame`, `format_telegram`.
- `scanners.driver`: `ScannerDriver`, the TCP client/server and ZeroMQ shell around it.
- `scanners.cli`: the `sorter scanner` command (`add_parser`, `cmd_scanner`).
- `scanners/presets/*.toml`: the bundled presets.

Nothing here imports the engine: drivers run as processes of their own.
"""
