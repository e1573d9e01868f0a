"""The operators' web view of the line: the chute wall, the line's figures and alarms, and a
parcel search over the audit, served by `sorter dashboard` (docs/dashboard.md). A layer above
the engine: it reads the engine through its control socket and the audit directory only."""
