"""Sort plans: the model (`model`), loading from TOML + CSV / Arrow / Parquet (`load`), the
checks with file, line and field (`validate`), and the bundled Almaty plan (`data/`).

    load_plan(path=None) -> Plan     None: the bundled DEFAULT_PLAN; raises PlanError
    validate(plan) -> [Problem]      the semantic checks, also for plans built in code
    summary(plan) -> dict            name, version and counts, for the CLI and logs

The file format is documented in docs/plans.md.
"""
from sorter.plan.load import load_plan, summary
from sorter.plan.model import (BUILT_IN, DEFAULT_PLAN, MANIFEST_PROBLEM_LIMIT, Destination, Plan,
                               PlanError, Problem)
from sorter.plan.checks import validate

__all__ = ["BUILT_IN", "DEFAULT_PLAN", "MANIFEST_PROBLEM_LIMIT", "Destination", "Plan", "PlanError",
           "Problem", "load_plan", "summary", "validate"]
