"""Operator tools (`emm`): probe a map, scan a bus, generate a SunSpec map, load library maps.

They only read devices (function codes 3 and 4) and talk to a bus one request at a
time, through the poller's own transport (poller/transport.py).
"""
