"""One exception type for every error a user can cause."""


class InputError(Exception):
    """Bad user input: a message naming the file, field and value.

    Entry points (Snakemake scripts, the CLI) print ``str(err)`` as a single line on stderr and
    exit non-zero; nothing else is caught.
    """

    def __init__(self, source, field, value, problem):
        self.source, self.field, self.value, self.problem = str(source), field, value, problem
        super().__init__(f"{self.source}: {field}={value!r}: {problem}")
