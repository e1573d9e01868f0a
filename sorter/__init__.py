"""sorter: a parcel sorting engine.

The folders are the data flow, lowest layer first; a module imports only from its own layer
or from the ones below it (tests/test_layers.py holds that):

    sorter.core     decode reads, route events to chutes (compiled core + reference router)
    sorter.plan     sort plans: the model, loading, validation, the bundled plan
    sorter.wire     the binary wire protocol between scanners, engine and PLC side
    sorter.audit    every decision kept on disk as Arrow IPC files
    sorter.engine   the process: sockets, the turn, control, metrics, config, launch
    sorter.cli      the `sorter` command: dispatches to the layers' own commands
"""
