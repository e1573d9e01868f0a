"""The decision audit (docs/audit.md): every decision in a write-ahead journal before it is sent
(`journal`), compacted behind the engine into Arrow IPC files in hive partitions by date
(`compactor`); `files` holds the schema and reads them, `query` finds a parcel's decisions,
`cli` is `sorter audit`."""
from sorter.audit.files import (AUDIT_SCHEMA, REASON_DICTIONARY, AuditLocked, audit_files,
                                read_audit, reads_array)

__all__ = ["AUDIT_SCHEMA", "REASON_DICTIONARY", "AuditLocked", "audit_files", "read_audit",
           "reads_array"]
