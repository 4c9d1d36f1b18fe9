"""Extract the ``POST /chat/completions`` operation of the official OpenAI OpenAPI document, with
every schema it references (transitively), into ``tests/fuzz/openai-chat-completions.json``.

The full document is ~2 MB; only this operation is fuzzed against the gateway (issue 16 §3), so
only it is kept, with its source recorded in ``info.x-source``. To refresh it from a newer spec:

    git clone https://github.com/openai/openai-openapi && cd openai-openapi && git rev-parse HEAD
    python tests/fuzz/extract_openai_spec.py path/to/openapi.json --commit <that commit> --date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openai-chat-completions.json")
REPOSITORY = "https://github.com/openai/openai-openapi"
PATH, METHOD = "/chat/completions", "post"


def refs(v: Any) -> set[str]:
    """The component names ``v`` references directly (``#/components/<kind>/<name>``)."""
    out: set[str] = set()
    if isinstance(v, dict):
        r = v.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/"):
            out.add(r[len("#/components/"):])
        for x in v.values():
            out |= refs(x)
    elif isinstance(v, list):
        for x in v:
            out |= refs(x)
    return out


def extract(spec: dict[str, Any], commit: str, date: str) -> dict[str, Any]:
    op = dict(spec["paths"][PATH][METHOD])
    op.pop("x-oaiMeta", None)  # documentation examples, megabytes of them in the full spec
    components: dict[str, dict[str, Any]] = {}
    todo = refs(op)
    while todo:
        name = todo.pop()
        kind, key = name.split("/", 1)
        if key in components.get(kind, {}):
            continue
        node = spec["components"][kind][key]
        components.setdefault(kind, {})[key] = node
        todo |= refs(node) - {f"{k}/{n}" for k, v in components.items() for n in v}
    if "securitySchemes" in spec.get("components", {}):
        components["securitySchemes"] = spec["components"]["securitySchemes"]
    return {
        "openapi": spec["openapi"],
        "info": {**spec["info"], "x-source": {"repository": REPOSITORY, "commit": commit, "date": date,
                                              "extracted": f"{METHOD.upper()} {PATH} and the schemas it references"}},
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "paths": {PATH: {METHOD: op}},
        "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path, help="the full OpenAI OpenAPI document (JSON)")
    ap.add_argument("--commit", required=True, help="the openai/openai-openapi commit it came from")
    ap.add_argument("--date", required=True, help="that commit's date")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc = extract(json.loads(args.spec.read_text()), args.commit, args.date)
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(doc['components'].get('schemas', {}))} schemas, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
