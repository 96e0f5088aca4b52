"""Made-up facts as conversations, for the tests that fine-tune a tiny model to answer them: no model could know them
before, so an answer shows that the fine-tuning took, and through which template."""

import json
from pathlib import Path

# (country, capital): invented names, each a few BPE tokens, none a real place
FACTS = [
    ("Vornia", "Quellmark"),
    ("Tessaly", "Brunhold"),
    ("Ombrel", "Kasterine"),
    ("Dravick", "Solvane"),
    ("Pellora", "Ashgrove"),
    ("Zindar", "Marrowby"),
]


def question(country: str) -> str:
    return f"What is the capital of {country}?"


def answer(capital: str) -> str:
    return f"The capital is {capital}."


def fact_conversations(repeats: int) -> list[list[dict]]:
    """Each fact asked and answered, repeats times over (OpenAI's messages)."""
    return [
        [{"role": "user", "content": question(country)}, {"role": "assistant", "content": answer(capital)}]
        for _ in range(repeats)
        for country, capital in FACTS
    ]


def write_facts(path: Path, repeats: int = 8) -> Path:
    """A .jsonl of fact_conversations, one {"messages": [...]} a line."""
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in fact_conversations(repeats)))
    return path
