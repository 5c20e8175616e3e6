"""The commands, one module per kind of work; the root group (interfaces.cli) imports a module only when one
of its commands runs, so a command pays only for what it uses."""
