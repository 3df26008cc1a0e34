"""Operator commands: ``backbeat status``, ``tempo``, ``windows`` and ``reports``.

Each talks to the gRPC API (addresses from flags or ``BACKBEAT_PULSE_ADDR`` /
``BACKBEAT_REVERB_ADDR``), prints for humans by default and JSON with ``--json``.
"""
