"""One module per `mathlens` subcommand; each defines `add_parser(subparsers)`."""
