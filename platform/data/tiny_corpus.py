"""A procedural, English-like pretraining corpus for tests and the tiny pipeline (no downloads).

Documents are built from a small grammar over a few hundred words, in several genres (stories,
how-to lists, reports with numbers, dialogues, encyclopedia entries), with long-tailed lengths (a few
documents are far longer than a typical row). The same seed always gives the same bytes.

    python -m qwen3_trainer.platform.data.tiny_corpus OUT_DIR --megabytes 4 --shards 4
"""

from __future__ import annotations

import argparse
import json
import os
import random

NAMES = ["Ada", "Boris", "Chen", "Dalia", "Emeka", "Freya", "Gustavo", "Hana", "Ivan", "Jia", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yusuf"]
PLACES = ["the harbour", "a mountain village", "the old library", "the river delta", "a quiet suburb",
          "the research station", "the night market", "a windy island", "the valley", "the city archive"]
NOUNS = ["lantern", "garden", "engine", "letter", "bridge", "forest", "violin", "map", "storm", "kitchen",
         "telescope", "orchard", "notebook", "ferry", "clock", "recipe", "signal", "mirror", "tunnel",
         "harvest", "festival", "painting", "compass", "market", "glacier", "theory", "machine", "song"]
ADJECTIVES = ["quiet", "bright", "ancient", "curious", "heavy", "fragile", "golden", "restless", "narrow",
              "patient", "hidden", "careful", "strange", "gentle", "distant", "broken", "clever", "green"]
VERBS = ["repaired", "discovered", "painted", "measured", "followed", "remembered", "built", "described",
         "questioned", "carried", "studied", "opened", "explained", "borrowed", "watched", "answered"]
ADVERBS = ["slowly", "carefully", "suddenly", "quietly", "eagerly", "almost", "rarely", "finally"]
CONNECTIVES = ["However,", "Later,", "Meanwhile,", "Because of this,", "Still,", "In the end,", "At first,"]
TOPICS = ["tides", "bees", "glass", "bread", "volcanoes", "printing", "railways", "salt", "clouds", "copper",
          "maps", "bridges", "silk", "ice", "clocks", "mushrooms", "lighthouses", "paper", "wind", "honey"]
FIELDS = ["geology", "history", "biology", "engineering", "economics", "chemistry", "music", "astronomy"]


def _np(rng: random.Random) -> str:
    adj = rng.choice(ADJECTIVES) + " " if rng.random() < 0.6 else ""
    return f"the {adj}{rng.choice(NOUNS)}"


def _sentence(rng: random.Random) -> str:
    subject = rng.choice(NAMES) if rng.random() < 0.5 else _np(rng).capitalize()
    adv = f" {rng.choice(ADVERBS)}" if rng.random() < 0.3 else ""
    tail = f" near {rng.choice(PLACES)}" if rng.random() < 0.4 else ""
    text = f"{subject}{adv} {rng.choice(VERBS)} {_np(rng)}{tail}."
    if rng.random() < 0.2:
        text = f"{rng.choice(CONNECTIVES)} {text if subject in NAMES else text[0].lower() + text[1:]}"
    return text


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _story(rng: random.Random, size: int) -> str:
    title = f"The {rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()}"
    return title + "\n\n" + "\n\n".join(_paragraph(rng, rng.randint(3, 7)) for _ in range(size))


def _howto(rng: random.Random, size: int) -> str:
    steps = [f"{i}. {rng.choice(VERBS).capitalize()} {_np(rng)} {rng.choice(ADVERBS)}."
             for i in range(1, size + 3)]
    return f"How to look after a {rng.choice(NOUNS)}\n\n" + "\n".join(steps) + "\n\n" + _paragraph(rng, 2)


def _report(rng: random.Random, size: int) -> str:
    lines = [f"Report on {rng.choice(TOPICS)} in {rng.choice(PLACES)}, year {rng.randint(1850, 2030)}."]
    for _ in range(size):
        value, change = rng.randint(3, 98_000), rng.uniform(-40, 40)
        lines.append(f"The count of {rng.choice(NOUNS)}s reached {value:,}, a change of {change:+.1f}% "
                     f"over {rng.randint(2, 19)} months. {_sentence(rng)}")
    return "\n".join(lines)


def _dialogue(rng: random.Random, size: int) -> str:
    a, b = rng.sample(NAMES, 2)
    turns = []
    for i in range(size + 2):
        who = a if i % 2 == 0 else b
        ask = rng.random() < 0.4
        line = f"Did you see {_np(rng)}?" if ask else _sentence(rng)
        turns.append(f'{who}: "{line}"')
    return "\n".join(turns)


def _entry(rng: random.Random, size: int) -> str:
    topic = rng.choice(TOPICS)
    head = f"{topic.capitalize()} ({rng.choice(FIELDS)})\n\n{topic.capitalize()} are studied in " \
           f"{rng.choice(FIELDS)} and {rng.choice(FIELDS)}."
    return head + "\n\n" + "\n\n".join(_paragraph(rng, rng.randint(2, 5)) for _ in range(size))


GENRES = [_story, _howto, _report, _dialogue, _entry]


def generate_documents(num_docs: int, seed: int = 0):
    """Yield ``num_docs`` documents; sizes are long-tailed (about 1 in 50 is ~10x longer)."""
    rng = random.Random(seed)
    for _ in range(num_docs):
        size = rng.randint(1, 6) * (10 if rng.random() < 0.02 else 1)
        yield rng.choice(GENRES)(rng, size)


def write_tiny_corpus(out_dir: str, megabytes: float = 4.0, shards: int = 4, seed: int = 0) -> list[str]:
    """Write about ``megabytes`` MB of ``{"text": ...}`` jsonl into ``shards`` files; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    budget = int(megabytes * 1_000_000 / shards)
    paths = []
    docs = generate_documents(10**9, seed)
    for i in range(shards):
        path = os.path.join(out_dir, f"tiny-{i:03d}.jsonl")
        written = 0
        with open(path, "w", encoding="utf-8") as fh:
            while written < budget:
                line = json.dumps({"text": next(docs)}, ensure_ascii=False) + "\n"
                fh.write(line)
                written += len(line.encode())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_tiny_corpus(args.out_dir, args.megabytes, args.shards, args.seed):
        print(path)


if __name__ == "__main__":
    main()
