"""The `nmt` subcommands, one module each: ``add_parser(commands)`` adds the command, its flags
and its help to the `nmt` parser (:mod:`pipelines.cli`), and ``run(args)`` carries it out."""
