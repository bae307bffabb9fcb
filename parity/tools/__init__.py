"""The `parity` command and its subcommands (one module each)."""
