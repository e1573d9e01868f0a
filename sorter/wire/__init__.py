"""The wire protocol (docs/protocol.md): `codec` is the Python face, `_wire` the compiled codec.

`from sorter import wire` gives the codec's public names (`wire.encode_scan`, ...);
`python -m sorter.wire HEX` prints the annotated dump of a message.
"""
from sorter.wire.codec import *  # noqa: F401,F403  (the codec's __all__)
from sorter.wire.codec import (CHUTE_STATUS_RECORD_SIZE, DECISION_RECORD_SIZE,  # noqa: F401
                               SCAN_FIXED_SIZE, SORT_CONFIRM_RECORD_SIZE, __all__, main)
