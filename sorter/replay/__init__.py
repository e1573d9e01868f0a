"""What-if replay (docs/replay.md): the recorded scans of the audit routed with a new sort plan,
counted without keeping the decisions, in one process or as partitions on a Dask cluster.

`source` lists and reads the audit's files (pyarrow.dataset, pruned by date), `partition`
routes one file with the compiled core, `totals` holds counts that merge exactly, `run` runs
the partitions here or on Dask, `summary` turns the totals into the JSON document and text,
`report` into PNG plots and a Markdown page, `cli` is `sorter replay`."""
from sorter.replay.run import Run, make_spec, replay
from sorter.replay.source import AuditSourceError, list_parts
from sorter.replay.summary import summarize
from sorter.replay.totals import Totals

__all__ = ["AuditSourceError", "Run", "Totals", "list_parts", "make_spec", "replay",
           "summarize"]
