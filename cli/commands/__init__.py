"""One module per command group; each registers its parsers and handlers."""
