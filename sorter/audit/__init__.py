"""The decision audit (docs/audit.md): every decision on disk before it is sent, as Arrow IPC
files in hive partitions by date; `files` writes, recovers and reads them, `_audit` encodes
record batches in C."""
from sorter.audit.files import (AUDIT_SCHEMA, REASON_DICTIONARY, AuditLocked, AuditWriter,
                                Recovery, audit_files, read_audit, reads_array, recover,
                                recover_files)

__all__ = ["AUDIT_SCHEMA", "REASON_DICTIONARY", "AuditLocked", "AuditWriter", "Recovery",
           "audit_files", "read_audit", "reads_array", "recover", "recover_files"]
