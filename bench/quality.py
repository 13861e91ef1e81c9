#!/usr/bin/env python3
"""Answer quality of the embedded model: ``python3 bench/quality.py`` (``make bench-quality``).

Starts ``python3 app.py`` on 127.0.0.1 (WORKERS=1, BACKEND=local, LOCAL_PRELOAD on, a free
port, a temporary working directory: no ``.env``, no ``config.toml``) and asks each of
:data:`QUESTIONS` (short questions with known answers: English, a few Chinese and Russian)
through ``POST /api`` with no sampling fields, ``--rounds`` times (default 2). It prints a
Markdown table: the share answered right (the answer contains one of the accepted forms), the
answers that loop (:func:`looping`), the seconds per answer, and the wrong answers; the JSON
goes to ``bench/results/quality-latest.json``. Targets: >= 75 % right, 0 loops.

``--env NAME=VALUE`` (repeatable) sets a setting for the service (e.g.
``--env LOCAL_TEMPERATURE=0.5``); ``--field NAME=JSON`` adds a field to every request body
(e.g. ``--field temperature=0``). Exit status 1 when a target is missed with ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

try:  # imported by the tests as bench.quality
    from bench.procs import Processes, free_port, wait_healthy
except ImportError:  # run as python3 bench/quality.py: bench/ is on the path
    from procs import Processes, free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RESULTS = ROOT / "bench" / "results"
TARGET_RIGHT = 0.75

#: (question, accepted answers as regular expressions, matched case-insensitively).
QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of France?", r"paris"),
    ("What is the capital of Japan?", r"tokyo"),
    ("What is the capital of Italy?", r"rome"),
    ("What is the capital of Germany?", r"berlin"),
    ("What is the capital of Spain?", r"madrid"),
    ("What is the capital of the United Kingdom?", r"london"),
    ("What is the capital of Russia?", r"moscow"),
    ("What is the capital of China?", r"beijing"),
    ("How many days are there in a week?", r"\b7\b|\bseven\b"),
    ("How many legs does a spider have?", r"\b8\b|\beight\b"),
    ("How many hours are there in a day?", r"\b24\b|twenty-four"),
    ("How many months are there in a year?", r"\b12\b|\btwelve\b"),
    ("How many sides does a triangle have?", r"\b3\b|\bthree\b"),
    ("What is 2 plus 2?", r"\b4\b|\bfour\b"),
    ("What color is the sky on a clear day?", r"blue"),
    ("What color are ripe bananas?", r"yellow"),
    ("What is the largest planet in the solar system?", r"jupiter"),
    ("Which planet do we live on?", r"earth"),
    ("What is the closest star to the Earth?", r"\bsun\b"),
    ("What is the chemical formula of water?", r"h2o|h₂o"),
    ("What is the boiling point of water in degrees Celsius?", r"\b100\b"),
    ("What is frozen water called?", r"\bice\b"),
    ("What gas do plants take in from the air?", r"carbon dioxide|co2|co₂"),
    ("What is the largest ocean on Earth?", r"pacific"),
    ("What is the tallest mountain in the world?", r"everest"),
    ("Who wrote Romeo and Juliet?", r"shakespeare"),
    ("Who painted the Mona Lisa?", r"leonardo|da vinci"),
    ("What language is spoken in Brazil?", r"portuguese"),
    ("What do bees make?", r"honey"),
    ("Which animal is called the king of the jungle?", r"\blions?\b"),
    ("What is the opposite of hot?", r"\bcold\b"),
    ("What is the largest country in the world by area?", r"russia"),
    ("中国的首都是哪里？", r"北京"),
    ("法国的首都是哪里？", r"巴黎"),
    ("一年有几个月？", r"12|十二"),
    ("Какая столица России?", r"москв"),
    ("Какая столица Франции?", r"париж"),
    ("Сколько дней в неделе?", r"\b7\b|семь"),
]


def looping(text: str) -> bool:
    """Whether an answer repeats itself: a piece of 4+ characters three times in a row, or
    (for 200+ characters) text that zlib compresses to under a third of its size.
    """
    flat = " ".join(text.split())
    if re.search(r"(.{4,}?)(?:\s*\1){2,}", flat):
        return True
    data = flat.encode("utf-8")
    return len(data) >= 200 and len(zlib.compress(data, 9)) < len(data) / 3


def right(answer: str, accepted: str) -> bool:
    """Whether ``answer`` contains one of the ``accepted`` forms."""
    return re.search(accepted, answer, re.IGNORECASE) is not None


def start_service(procs: Processes, env_extra: dict[str, str]) -> str:
    """``app.py`` with the embedded model preloaded; its base URL once ``/readyz`` answers."""
    port = free_port()
    (procs.workdir / "config.toml").write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "BACKEND": "local",
        "LOCAL_PRELOAD": "1",
        "STORE_URL": "memory://",
        "CONFIG_FILE": str(procs.workdir / "config.toml"),
        **env_extra,
    }
    proc = procs.start("service", [sys.executable, str(ROOT / "app.py")], env=env)
    wait_healthy(port, proc, 120, lambda: procs.log_tail("service"), path="/readyz")
    return f"http://127.0.0.1:{port}"


def ask_all(url: str, rounds: int, fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Every question ``rounds`` times (round after round); one record per answer."""
    import requests

    records = []
    for round_index in range(rounds):
        for question, accepted in QUESTIONS:
            started = time.perf_counter()
            response = requests.post(
                url + "/api", json={"user_content": question, **fields}, timeout=300
            )
            seconds = time.perf_counter() - started
            body = response.json()
            answer = body.get("current_response") or ""
            records.append(
                {
                    "round": round_index,
                    "question": question,
                    "answer": answer,
                    "status": response.status_code,
                    "finish_reason": body.get("data", {}).get("finish_reason"),
                    "right": response.status_code == 200 and right(answer, accepted),
                    "loop": looping(answer),
                    "seconds": round(seconds, 3),
                }
            )
    return records


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    count = len(records)
    return {
        "answers": count,
        "right": sum(r["right"] for r in records),
        "share_right": sum(r["right"] for r in records) / count,
        "loops": sum(r["loop"] for r in records),
        "seconds_per_answer": sum(r["seconds"] for r in records) / count,
    }


def table(result: dict[str, Any]) -> str:
    s = result["summary"]
    right_ok = "pass" if s["share_right"] >= TARGET_RIGHT else "**miss**"
    loops_ok = "pass" if s["loops"] == 0 else "**miss**"
    rows = [
        "| measure | value | target | |",
        "| --- | --- | --- | --- |",
        f"| answered right | {s['right']}/{s['answers']} ({s['share_right']:.0%}) "
        f"| >= 75 % | {right_ok} |",
        f"| looping answers | {s['loops']} | 0 | {loops_ok} |",
        f"| seconds per answer | {s['seconds_per_answer']:.2f} | | |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--field", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    env_extra = dict(item.split("=", 1) for item in args.env)
    fields = {name: json.loads(value) for name, value in (f.split("=", 1) for f in args.field)}

    with tempfile.TemporaryDirectory(prefix="chatservice-quality-") as tmp:
        procs = Processes(Path(tmp))
        try:
            records = ask_all(start_service(procs, env_extra), args.rounds, fields)
        finally:
            procs.stop_all()
    result = {
        "settings": env_extra,
        "fields": fields,
        "summary": summary(records),
        "answers": records,
    }
    print(table(result))
    for record in records:
        if not record["right"] or record["loop"]:
            flag = " LOOP" if record["loop"] else ""
            print(f"- {record['question']} -> {record['answer'][:100]!r}{flag}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality-latest.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    s = result["summary"]
    missed = s["share_right"] < TARGET_RIGHT or s["loops"] > 0
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    sys.exit(main())
