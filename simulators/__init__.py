"""Simulated hardware for running and testing the whole line without a sorter: a scanner tunnel
(parcels with labels, read as telegrams or sent straight as scan events) and a PLC/sorter loop
(carriers, chutes that fill and empty, failed diverts, recirculation)."""
