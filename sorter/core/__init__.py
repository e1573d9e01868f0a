"""The routing core: barcode decoding, the compiled router and the reference router.

Sans-IO and columnar: an `EventBatch` (Arrow-style offsets) in, `Decisions` out. The compiled
router (`_core.pyx`) and the plain-Python `ReferenceRouter` are held equal decision by decision
by the tests; `Router` is the face to use. Nothing here imports the plan, wire, audit or engine
layers: a plan reaches the core as an object with the `sorter.plan.Plan` fields.
"""
from sorter.core.events import Decisions, EventBatch
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router, compile_plan

__all__ = ["Decisions", "EventBatch", "ReferenceRouter", "Router", "compile_plan"]
