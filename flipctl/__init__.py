"""flipctl: the command line over the `flip` library. Commands only parse, call and print."""
