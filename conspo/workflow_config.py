"""How the workflow reads its config (config/tiny.yaml, config/paper.yaml) before planning anything: the files
themselves, then the schema, each error in one line that starts with the file and line or the dotted key at fault.

    check_config_files(paths)        YAML syntax errors with their line; a key defined twice in one mapping (YAML
                                     loaders, Snakemake's included, keep the last definition without a word)
    check_schema(config, schema)     snakemake.utils.validate (which also fills the schema's defaults); an error is
                                     re-stated as "dotted.key: message", without the schema dump

Conspo.plan.Plan then checks what the schema cannot (cross references, every parameter's range, the data).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .plan import PlanError


def _duplicates(node, path: str = ""):
    """(dotted key, line, line of its first definition) of every key defined twice in one mapping under `node`."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, it does not redefine
                continue
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                yield key, line, first_line[key_node.value]
            first_line.setdefault(key_node.value, line)
            yield from _duplicates(value_node, key)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, f"{path}[{index}]")


def check_config_file(path: str | Path) -> None:
    """Refuse, naming the file and line, a config file that is not valid YAML or that defines a key twice."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(part for part in (err.context, err.problem) if part)
        raise PlanError(f"{path}{where}: not valid YAML ({what})") from None
    for key, line, first in _duplicates(node):
        raise PlanError(f"{key}: defined twice in {path} (lines {first} and {line}); the second definition would "
                        "silently replace the first")


def check_config_files(paths) -> None:
    for path in paths:
        check_config_file(path)


def _dotted(path) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def check_schema(config: dict, schema_path: str | Path) -> None:
    """Validate `config` against the workflow's schema with Snakemake (filling its defaults into `config`); on an
    error, raise PlanError("dotted.key: message") for the most relevant violation instead of Snakemake's dump of
    the schema."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path))
    except WorkflowError:
        import jsonschema

        schema = yaml.safe_load(Path(schema_path).read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(config))
        if error is None:  # Snakemake refused what jsonschema accepts: let its message stand
            raise
        key = _dotted(error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            extra = sorted(set(error.instance) - set(known))
            if extra:
                key = f"{key}.{extra[0]}" if key else extra[0]
                message = f"unknown key; known keys{f' of {_dotted(error.absolute_path)}' if error.absolute_path else ''}: " \
                          f"{', '.join(known)}"
        elif error.validator == "required":
            missing = next((name for name in error.validator_value if name not in error.instance), None)
            if missing is not None:
                key, message = (f"{key}.{missing}" if key else missing), "required"
        raise PlanError(f"{key or 'config'}: {message}") from None
