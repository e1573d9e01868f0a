"""GS1 Application Identifier data for the barcode decoder (docs/routing.md section 1.3).

Plain data, shared by the reference decoder (`sorter/core/barcodes.py`) and the compiled core:

- `AI_LENGTH_BY_PREFIX`: how many digits an AI has, from its first two digits;
- `PREDEFINED_LENGTH`: prefixes whose element strings have a predefined total length (AI +
  data) and so need no FNC1/GS terminator;
- `AI_TABLE`: every AI the decoder accepts, with (min data length, max data length,
  numeric_only). numeric_only=False means GS1 character set 82. Compound formats are flattened
  to the length bounds of the whole field (e.g. 7030 "N3+X..27" -> (4, 30, False)); only the
  routing AIs are checked more closely by the decoder (421 is n3 + X..9, see barcodes.py);
- `ROUTING_AIS`, `CHARSET_82`.

Source: GS1 General Specifications / GS1 Barcode Syntax Dictionary (ref.gs1.org/ai, 2025
edition), cross-checked against the AI table shipped with biip 5.
"""

# First two digits of an AI -> number of digits of the AI. Every AI starting with the same two
# digits has the same length. 04, 14, 18 and 19 are reserved by GS1 (they appear in the
# predefined-length table) but no AI is assigned to them yet, so they are absent from AI_TABLE.
AI_LENGTH_BY_PREFIX: dict[str, int] = {
    **{f"{p:02d}": 2 for p in range(0, 5)},     # 00-04
    **{f"{p:02d}": 2 for p in range(10, 23)},   # 10-22
    "23": 3, "24": 3, "25": 3,
    "30": 2,
    **{f"{p:02d}": 4 for p in range(31, 37)},   # 31-36
    "37": 2,
    "39": 4,
    "40": 3, "41": 3, "42": 3,
    "43": 4,
    "70": 4,
    "71": 3,
    "72": 4,
    "80": 4, "81": 4, "82": 4,
    **{f"{p:02d}": 2 for p in range(90, 100)},  # 90-99
}

# Prefixes with a predefined element string length (AI included): no FNC1/GS needed after them.
# GS1 General Specifications, "element strings with predefined length" table.
PREDEFINED_LENGTH: dict[str, int] = {
    "00": 20, "01": 16, "02": 16, "03": 16, "04": 18,
    **{f"{p:02d}": 8 for p in range(11, 20)},   # 11-19
    "20": 4,
    **{f"{p:02d}": 10 for p in range(31, 37)},  # 31-36
    "41": 16,
}

N, X = True, False   # numeric_only flag

# (first AI, last AI, min data length, max data length, numeric_only); a range covers every AI
# between first and last inclusive (all of the same length).
_RANGES: tuple[tuple[str, str, int, int, bool], ...] = (
    ("00", "00", 18, 18, N),      # SSCC
    ("01", "03", 14, 14, N),      # GTIN, CONTENT, MTO GTIN
    ("10", "10", 1, 20, X),       # BATCH/LOT
    ("11", "13", 6, 6, N),        # PROD DATE, DUE DATE, PACK DATE
    ("15", "17", 6, 6, N),        # BEST BEFORE, SELL BY, USE BY
    ("20", "20", 2, 2, N),        # VARIANT
    ("21", "22", 1, 20, X),       # SERIAL, CPV
    ("235", "235", 1, 28, X),     # TPX
    ("240", "241", 1, 30, X),     # ADDITIONAL ID, CUST. PART No.
    ("242", "242", 1, 6, N),      # MTO VARIANT
    ("243", "243", 1, 20, X),     # PCN
    ("250", "251", 1, 30, X),     # SECONDARY SERIAL, REF. TO SOURCE
    ("253", "253", 13, 30, X),    # GDTI: N13 [X..17]
    ("254", "254", 1, 20, X),     # GLN EXTENSION COMPONENT
    ("255", "255", 13, 25, N),    # GCN: N13 [N..12]
    ("30", "30", 1, 8, N),        # VAR. COUNT
    # 310n-369n trade and logistic measures, n = decimals 0..5: N6
    *((f"3{m:02d}0", f"3{m:02d}5", 6, 6, N) for m in (
        *range(10, 17), *range(20, 30), *range(30, 38), *range(40, 50), *range(50, 58),
        *range(60, 70))),
    ("37", "37", 1, 8, N),        # COUNT
    ("3900", "3909", 1, 15, N),   # AMOUNT
    ("3910", "3919", 4, 18, N),   # AMOUNT: N3 (ISO 4217) + N..15
    ("3920", "3929", 1, 15, N),   # PRICE
    ("3930", "3939", 4, 18, N),   # PRICE: N3 (ISO 4217) + N..15
    ("3940", "3943", 4, 4, N),    # PRCNT OFF
    ("3950", "3955", 6, 6, N),    # PRICE/UoM
    ("400", "401", 1, 30, X),     # ORDER NUMBER, GINC (routing: consignment)
    ("402", "402", 17, 17, N),    # GSIN
    ("403", "403", 1, 30, X),     # ROUTE (routing: routing code)
    ("410", "417", 13, 13, N),    # GLNs
    ("420", "420", 1, 20, X),     # SHIP TO POST (routing)
    ("421", "421", 3, 12, X),     # SHIP TO POST: N3 (ISO 3166) + X..9 (routing, checked specially)
    ("422", "422", 3, 3, N),      # ORIGIN
    ("423", "423", 3, 15, N),     # COUNTRY - INITIAL PROCESS: 1 to 5 x N3
    ("424", "424", 3, 3, N),      # COUNTRY - PROCESS
    ("425", "425", 3, 15, N),     # COUNTRY - DISASSEMBLY: 1 to 5 x N3
    ("426", "426", 3, 3, N),      # COUNTRY - FULL PROCESS
    ("427", "427", 1, 3, X),      # ORIGIN SUBDIVISION
    ("4300", "4301", 1, 35, X),   # SHIP TO COMP, SHIP TO NAME
    ("4302", "4306", 1, 70, X),   # SHIP TO ADD1, ADD2, SUB, LOC, REG
    ("4307", "4307", 2, 2, X),    # SHIP TO COUNTRY
    ("4308", "4308", 1, 30, X),   # SHIP TO PHONE
    ("4309", "4309", 20, 20, N),  # SHIP TO GEO
    ("4310", "4311", 1, 35, X),   # RTN TO COMP, RTN TO NAME
    ("4312", "4316", 1, 70, X),   # RTN TO ADD1, ADD2, SUB, LOC, REG
    ("4317", "4317", 2, 2, X),    # RTN TO COUNTRY
    ("4318", "4318", 1, 20, X),   # RTN TO POST
    ("4319", "4319", 1, 30, X),   # RTN TO PHONE
    ("4320", "4320", 1, 35, X),   # SRV DESCRIPTION
    ("4321", "4323", 1, 1, N),    # DANGEROUS GOODS, AUTH TO LEAVE, SIG REQUIRED
    ("4324", "4325", 10, 10, N),  # NOT BEF / NOT AFT DEL DT
    ("4326", "4326", 6, 6, N),    # REL DATE
    ("4330", "4333", 6, 7, X),    # MAX/MIN TEMP: N6 [-]
    ("7001", "7001", 13, 13, N),  # NSN
    ("7002", "7002", 1, 30, X),   # MEAT CUT
    ("7003", "7003", 10, 10, N),  # EXPIRY TIME
    ("7004", "7004", 1, 4, N),    # ACTIVE POTENCY
    ("7005", "7005", 1, 12, X),   # CATCH AREA
    ("7006", "7006", 6, 6, N),    # FIRST FREEZE DATE
    ("7007", "7007", 6, 12, N),   # HARVEST DATE: N6 [N6]
    ("7008", "7008", 1, 3, X),    # AQUATIC SPECIES
    ("7009", "7009", 1, 10, X),   # FISHING GEAR TYPE
    ("7010", "7010", 1, 2, X),    # PROD METHOD
    ("7011", "7011", 6, 10, N),   # TEST BY DATE: N6 [N4]
    ("7020", "7022", 1, 20, X),   # REFURB LOT, FUNC STAT, REV STAT
    ("7023", "7023", 1, 30, X),   # GIAI - ASSEMBLY
    ("7030", "7039", 4, 30, X),   # PROCESSOR # n: N3 + X..27
    ("7040", "7040", 4, 4, X),    # UIC+EXT: N1 X1 X1 X1
    ("7041", "7041", 1, 4, X),    # UFRGT UNIT TYPE
    ("710", "717", 1, 20, X),     # NHRN PZN, CIP, CN, DRN, AIM, NDC, AIC, SRN
    ("7230", "7239", 3, 30, X),   # CERT # n: X2 + X..28
    ("7240", "7240", 1, 20, X),   # PROTOCOL
    ("7241", "7241", 2, 2, N),    # AIDC MEDIA TYPE
    ("7242", "7242", 1, 25, X),   # VCN
    ("7250", "7250", 8, 8, N),    # DOB
    ("7251", "7251", 12, 12, N),  # DOB TIME
    ("7252", "7252", 1, 1, N),    # BIO SEX
    ("7253", "7254", 1, 40, X),   # FAMILY NAME, GIVEN NAME
    ("7255", "7255", 1, 10, X),   # SUFFIX
    ("7256", "7256", 1, 90, X),   # FULL NAME
    ("7257", "7257", 1, 70, X),   # PERSON ADDR
    ("7258", "7258", 3, 3, X),    # BIRTH SEQUENCE
    ("7259", "7259", 1, 40, X),   # BABY
    ("8001", "8001", 14, 14, N),  # DIMENSIONS
    ("8002", "8002", 1, 20, X),   # CMT No.
    ("8003", "8003", 14, 30, X),  # GRAI: N14 [X..16]
    ("8004", "8004", 1, 30, X),   # GIAI
    ("8005", "8005", 6, 6, N),    # PRICE PER UNIT
    ("8006", "8006", 18, 18, N),  # ITIP
    ("8007", "8007", 1, 34, X),   # IBAN
    ("8008", "8008", 8, 12, N),   # PROD TIME: N8 [N..4]
    ("8009", "8009", 1, 50, X),   # OPTSEN
    ("8010", "8010", 1, 30, X),   # CPID: GS1 set 39 (its '#' is outside set 82; non-routing)
    ("8011", "8011", 1, 12, N),   # CPID SERIAL
    ("8012", "8012", 1, 20, X),   # VERSION
    ("8013", "8014", 1, 25, X),   # GMN, MUDI
    ("8017", "8018", 18, 18, N),  # GSRN - PROVIDER, RECIPIENT
    ("8019", "8019", 1, 10, N),   # SRIN
    ("8020", "8020", 1, 25, X),   # REF No.
    ("8026", "8026", 18, 18, N),  # ITIP CONTENT
    ("8030", "8030", 1, 90, X),   # DIGSIG (base64url, a subset of set 82)
    ("8040", "8041", 15, 15, N),  # IMEI, IMEI2
    ("8042", "8042", 32, 32, N),  # ESIM
    ("8043", "8043", 18, 20, N),  # PSIM: N18 [N..2]
    ("8110", "8110", 1, 70, X),   # coupon code
    ("8111", "8111", 4, 4, N),    # POINTS
    ("8112", "8112", 1, 70, X),   # paperless coupon code
    ("8200", "8200", 1, 70, X),   # PRODUCT URL
    ("90", "90", 1, 30, X),       # INTERNAL
    ("91", "99", 1, 90, X),       # INTERNAL
)

# AI -> (min data length, max data length, numeric_only)
AI_TABLE: dict[str, tuple[int, int, bool]] = {
    f"{ai:0{len(first)}d}": (lo, hi, numeric)
    for first, last, lo, hi, numeric in _RANGES
    for ai in range(int(first), int(last) + 1)
}

# AIs the router reads: SSCC, consignment, routing code, ship-to postcode, ship-to country+postcode.
ROUTING_AIS: tuple[str, ...] = ("00", "401", "403", "420", "421")

# GS1 AI encodable character set 82, as byte values.
CHARSET_82: frozenset[int] = frozenset(
    b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)

del N, X
