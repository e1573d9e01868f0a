"""Look decisions up in an audit directory: every decision for one parcel id or barcode."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from sorter.audit.files import audit_files, read_audit


def find(directory, key: str) -> list[dict]:
    """Every decision whose `parcel_id` is `key` (when it is a number) or one of whose `reads`
    is `key`, oldest first, as dicts of the audit's columns. Sealed files are read with
    pyarrow.dataset a batch at a time, the file being written up to its last complete batch
    (`read_audit`); a missing directory finds nothing."""
    files = audit_files(directory)
    sealed = [str(p) for p in files if not p.name.endswith(".part")]
    batches = list(ds.dataset(sealed, format="arrow").to_batches()) if sealed else []
    for p in files:
        if p.name.endswith(".part"):
            batches += read_audit(p).to_batches()
    parcel_id = pa.scalar(int(key), pa.uint64()) if key.isdigit() and int(key) < 1 << 64 \
        else None
    found = []
    for batch in batches:
        reads = batch.column("reads")
        hit = pc.list_parent_indices(reads).filter(pc.equal(pc.list_flatten(reads), key))
        mask = pc.is_in(pa.array(range(batch.num_rows), pa.int64()), value_set=hit)
        if parcel_id is not None:
            mask = pc.or_(mask, pc.fill_null(pc.equal(batch.column("parcel_id"), parcel_id),
                                              False))
        if pc.any(mask).as_py():
            found.append(batch.filter(mask))
    if not found:
        return []
    table = pa.Table.from_batches(found).sort_by([("ts", "ascending"),
                                                  ("decision_seq", "ascending")])
    # datetime has microseconds: ts as a datetime to the microsecond
    i = table.schema.get_field_index("ts")
    table = table.set_column(i, "ts", table.column("ts").cast(pa.timestamp("us", "UTC"),
                                                              safe=False))
    rows = table.to_pylist()
    seen = set()                   # a file sealed while it was being listed is read twice
    return [r for r in rows if not ((r["decision_seq"], r["ts"]) in seen
                                    or seen.add((r["decision_seq"], r["ts"])))]
