"""Command-line interface: one file per subcommand, each a thin layer over library functions."""
