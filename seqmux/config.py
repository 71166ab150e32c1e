"""Config checks shared by the workflow and the command-line tool."""

import jsonschema
import yaml


def config_error(config, schema_path, source="config"):
    """One line naming the first field of ``config`` that breaks the schema, or None."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    value = error.instance if not isinstance(error.instance, dict) else "{...}"
    return f"{source}: {field}={value!r}: {error.message}"
