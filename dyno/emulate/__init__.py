"""Emulation of the device side's environment: bandwidth traces (``dyno.emulate.traces``), the link
(``dyno.emulate.link``) and device speed (``dyno.emulate.device``).

Kept minimal on purpose: import the submodule you need; nothing heavy is imported here.
"""
