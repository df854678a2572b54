"""Export of the event models as JSON Schema files, for producers that do not use Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.alert import Alert
from schemas.call_event import CallEvent
from schemas.outcome_event import OutcomeEvent

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"
EXPORTED: dict[str, type[BaseModel]] = {
    "call_event.schema.json": CallEvent,
    "outcome_event.schema.json": OutcomeEvent,
    "alert.schema.json": Alert,
}


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` as it validates input (aliases included), as stable text."""
    schema: dict[str, Any] = model.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every exported schema into ``directory``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EXPORTED.items():
        path = directory / name
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
