"""Scanner drivers: telegrams from barcode scanners and camera tunnels (TCP or serial) in, SCAN
messages to the engine out (docs/scanners.md).

- `scanners.framing`: the sans-IO core: presets (`load_format`), `FrameSplitter`,
  `parse_frame` (with the signs of a preset mismatch), `format_telegram`.
- `scanners.driver`: `ScannerDriver`, the TCP client/server, serial port and ZeroMQ shell.
- `scanners.sniff`: `sorter scanner --sniff`: telegrams shown, no engine; proposes a preset.
- `scanners.metrics`: the driver's counters for Prometheus (`--metrics`).
- `scanners.cli`: the `sorter scanner` command (`add_parser`, `cmd_scanner`).
- `scanners/presets/*.toml`: the bundled presets.

Nothing here imports the engine: drivers run as processes of their own.
"""
