"""Numeric codes shared by the compiled core, the reference router, the CLI and the audit.

The names are contracts (they appear in JSON output, audit files and docs); the numbers are
what travels in arrays. `sorter/core/_core.pxd` repeats the numbers as C enums and a test checks
that the two agree.
"""

# Decision reasons. The order is fixed: audit files store the index of a fixed dictionary.
REASONS = (
    "sorted",               # 0 diverted into a chute of the resolved destination
    "no_read",              # 1 the event carried no reads
    "invalid",              # 2 reads present, none valid
    "conflict",             # 3 valid reads resolve to different destinations
    "unknown_destination",  # 4 valid reads, no rule gives a destination
    "recirculate",          # 5 no chute of the destination available, below the limit
    "overflow",             # 6 no chute available and the recirculation limit reached
    "late",                 # 7 the event reached the core after its deadline
    "malformed",            # 8 the engine could not decode the message carrying the event
)
REASON_CODE = {name: i for i, name in enumerate(REASONS)}
SORTED, NO_READ, INVALID, CONFLICT, UNKNOWN_DESTINATION, RECIRCULATE, OVERFLOW, LATE, MALFORMED = range(9)

# Reasons that send the parcel to a special chute named in the plan.
SPECIAL_REASONS = ("no_read", "invalid", "conflict", "unknown_destination", "overflow")

# Kinds of read.
KINDS = ("unknown", "s10", "gs1", "postcode")
KIND_UNKNOWN, KIND_S10, KIND_GS1, KIND_POSTCODE = range(4)

# Read validation outcome: 0 is valid, anything else is the precise error.
ERRORS = (
    None,                 # 0 valid
    "bad_length",         # 1
    "bad_character",      # 2
    "bad_check_digit",    # 3
    "reserved_service",   # 4 S10 service indicator starting with J, K, S, T or W
    "bad_ai_field",       # 5 a routing AI (00, 401, 403, 420, 421) with a broken field
    "bad_gs1_syntax",     # 6 the GS1 message cannot be split into AIs
    "unrecognised",       # 7 not shaped like any known kind
)
ERROR_CODE = {name: i for i, name in enumerate(ERRORS) if name}
OK, BAD_LENGTH, BAD_CHARACTER, BAD_CHECK_DIGIT, RESERVED_SERVICE, BAD_AI_FIELD, BAD_GS1_SYNTAX, UNRECOGNISED = range(8)

# Chute states, as held per chute number by the router and reported by the PLC.
CHUTE_STATES = ("available", "disabled", "full")
CHUTE_AVAILABLE, CHUTE_DISABLED, CHUTE_FULL = range(3)

# Chute 0 means "no divert": the parcel stays on the carrier and comes round again.
NO_CHUTE = 0
MAX_CHUTE = 65535
# Destination index meaning "none".
NO_DESTINATION = -1

POLICIES = ("fill_first", "round_robin")
POLICY_FILL_FIRST, POLICY_ROUND_ROBIN = range(2)
