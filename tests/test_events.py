"""Columnar event batches: builders and concatenation keep every event and read intact."""
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from sorter.core.events import EventBatch, concat_batches

reads = st.lists(st.lists(st.binary(max_size=8), max_size=3), max_size=6)


@given(st.lists(reads, min_size=1, max_size=4))
def test_concat_keeps_every_event_and_read(parts):
    batches = [EventBatch.from_reads(p, recirculations=[i % 3 for i in range(len(p))]) for p in parts]
    joined = concat_batches(batches)
    flat = [e for p in parts for e in p]
    assert len(joined) == len(flat)
    assert [joined.reads(i) for i in range(len(joined))] == flat
    assert joined.recirculations.tolist() == [i % 3 for p in parts for i in range(len(p))]


@given(reads, st.integers(0, 6))
def test_from_arrow_slices_equal_from_reads(events, start):
    start = min(start, len(events))
    arr = pa.array(events, pa.list_(pa.binary())).slice(start)
    batch = EventBatch.from_arrow(arr)
    assert [batch.reads(i) for i in range(len(batch))] == events[start:]
    # a slice of a slice, concatenated with the original, still lines up
    joined = concat_batches([batch, EventBatch.from_reads(events)])
    assert [joined.reads(i) for i in range(len(joined))] == events[start:] + events
