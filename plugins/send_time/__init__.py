"""Send-time optimization: each contact's best hour from their own human engagement (issue 24).

``profile`` computes the per-contact profile and plans a send inside a campaign's window; the
campaign plugin calls it at fan-out. The hook that lets a plugin replace the formula is added
with the campaign plugin.
"""
