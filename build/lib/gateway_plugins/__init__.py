"""Built-in plugins: one module = one plugin = one ``[plugins.<name>]`` table = one doc page."""
