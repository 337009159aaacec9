"""Subcommands of the ``gateway`` CLI, one module per group (``gateway/cli.py`` builds the
parser and calls each module's ``add_commands``)."""
