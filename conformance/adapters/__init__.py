"""Thin adapters for the flow libraries users have, each ``flowspec.conformance.adapters.<library>``
with a ``conformance_adapter``: ``flowspec conformance --impl flowspec.conformance.adapters.zuko``
(likewise ``nflows`` and ``normflows``). They need the ``peers`` extra (``pip install -c
constraints.txt -e ".[peers]"``); importing one without its library raises an ImportError saying so.

An adapter here only maps: which class of the library computes which kind (a registered one, or a
foreign kind ``<library>:<name>`` with the structure it claims), a config to constructor arguments
(declining, with a reason, what the library cannot honour), the calling convention and direction,
and parameter names. No flow logic lives here. The docs' "Checking zuko / nflows / normflows" pages
list what each maps and the verified findings.
"""
