"""The ``irepa`` command line. Only this package reads argv, environment variables and user paths."""
