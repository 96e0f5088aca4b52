class GptkitError(Exception):
    """A problem the user can fix (bad input, missing file, ...): the CLI prints its message on one line and exits 1."""
