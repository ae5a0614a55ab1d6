"""What recflow's HTTP services (the model server, the feedback service) say about a malformed body."""

from __future__ import annotations


def validation_problems(errors: list[dict]) -> str:
    """Pydantic/FastAPI validation errors as ``field.path: message; ...``, the field named as the client wrote it."""
    problems = []
    for problem in errors:
        location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        problems.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}")
    return "; ".join(problems)
