"""The PLC gateway, `sorter plc`: engine decisions to the sorter PLC in its own protocol, and
the PLC's chute states and sort reports back to the engine (docs/plc.md).

Sans-IO cores, thin I/O shells (as in scanners/):
- `telegrams`: TCP telegram presets (TOML), codec and stream splitter;
- `session`: the telegram session both ends run (sequence numbers, ack, resend, life, stale);
- `models`: the OPC UA node model and the Modbus register map (TOML);
- `backlog`: decisions waiting for a mailbox slot, with the stale-decision rule;
- `engine_link`: the engine's decisions and feedback sockets (ZeroMQ);
- `polled`: the thread, reconnect state and counters the OPC UA and Modbus gateways share;
- `tcp`, `opcua`, `modbus`: the gateways; `cli`: the command.
"""
