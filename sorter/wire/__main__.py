"""python -m sorter.wire HEX...: the annotated dump of one wire message."""
from sorter.wire.codec import main

raise SystemExit(main())
