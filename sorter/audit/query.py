"""Look decisions up in an audit directory: every decision for one parcel id or barcode."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds


def find(directory, key: str) -> list[dict]:
    """Every decision whose `parcel_id` is `key` (when it is a number) or one of whose `reads`
    is `key`, oldest first, as dicts of the audit's columns. Reads the sealed files
    (`**/*.arrow`) with pyarrow.dataset, a batch at a time; an empty or missing directory
    finds nothing."""
    files = sorted(str(p) for p in Path(directory).glob("date=*/*.arrow"))
    if not files:
        return []
    dataset = ds.dataset(files, format="arrow")
    parcel_id = int(key) if key.isdigit() and int(key) < 1 << 64 else None
    found = []
    for batch in dataset.to_batches():
        reads = batch.column("reads")
        hit = pc.list_parent_indices(reads).filter(pc.equal(pc.list_flatten(reads), key))
        mask = pc.is_in(pa.array(range(batch.num_rows)), value_set=hit)
        if parcel_id is not None:
            mask = pc.or_(mask, pc.fill_null(pc.equal(batch.column("parcel_id"),
                                                       pa.scalar(parcel_id, pa.uint64())), False))
        if pc.any(mask).as_py():
            found.append(batch.filter(mask))
    if not found:
        return []
    table = pa.Table.from_batches(found).sort_by([("ts", "ascending"),
                                                  ("decision_seq", "ascending")])
    return table.to_pylist()
