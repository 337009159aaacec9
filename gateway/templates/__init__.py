"""Untrusted Jinja2 templates rendered under hard limits, off the event loop.

``sandbox`` compiles and renders (in the render worker process), ``worker`` is that process,
``pool`` is the event loop's side: a bounded pool of worker processes, one per gateway worker
(``Gateway.renderers``), shared by batch sends and stored campaign templates.
"""
