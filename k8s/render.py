"""Print manifests for `kubectl apply -f -` with the images (and options) `make` chose.

    python3 k8s/render.py [--image NAME=REF]... [--trigger-auth NAME] FILE...

--image buy=ghcr.io/acme/purchase/buy:1.2 replaces the image of every container whose
    image repository ends in "/buy" (the manifests carry the `make build` defaults,
    dev.local/purchase/<name>:dev). A NAME that matches no container is an error, so a
    renamed image cannot silently deploy the default.
--trigger-auth NAME adds `authenticationRef: {name: NAME}` to every KEDA trigger, for a
    Kafka that needs SASL/TLS (k8s/keda/optional/).

Standard library only, so deploying needs no virtualenv. The files are printed as they
are apart from those lines, comments included, joined as one multi-document stream.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

IMAGE_LINE = re.compile(r"^(?P<lead>\s*(?:-\s+)?image:\s*)(?P<ref>[^\s#]+)(?P<tail>.*)$")
TRIGGER_LINE = re.compile(r"^(?P<indent>\s*)-\s+type:\s*\S+\s*$")


def repository_name(ref: str) -> str:
    """Last path element of an image reference, without tag or digest."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def render(text: str, images: dict[str, str], trigger_auth: str | None, used: set[str]) -> str:
    out = []
    triggers_indent = None  # indentation of the `triggers:` key while inside its list
    for line in text.splitlines():
        match = IMAGE_LINE.match(line)
        if match and repository_name(match["ref"]) in images:
            name = repository_name(match["ref"])
            used.add(name)
            line = f"{match['lead']}{images[name]}{match['tail']}"
        out.append(line)
        if trigger_auth is None or not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if triggers_indent is not None and indent <= triggers_indent and not line.lstrip().startswith("-"):
            triggers_indent = None
        if re.match(r"^\s*triggers:\s*$", line):
            triggers_indent = indent
        elif triggers_indent is not None and (trigger := TRIGGER_LINE.match(line)) \
                and len(trigger["indent"]) in (triggers_indent, triggers_indent + 2):
            key_indent = trigger["indent"] + "  "
            out.append(f"{key_indent}authenticationRef:")
            out.append(f"{key_indent}  name: {trigger_auth}")
            used.add("--trigger-auth")
    return "\n".join(out) + "\n"


def parse_images(values: list[str]) -> dict[str, str]:
    images = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name or not ref or any(c.isspace() for c in ref):
            raise SystemExit(f"render.py: --image wants NAME=REF, got {value!r}")
        images[name] = ref
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="append", default=[], metavar="NAME=REF")
    parser.add_argument("--trigger-auth", metavar="NAME")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    images = parse_images(args.image)
    used: set[str] = set()
    documents = [render(path.read_text(), images, args.trigger_auth, used) for path in args.files]
    missing = sorted(set(images) - used)
    if args.trigger_auth and "--trigger-auth" not in used:
        missing.append("--trigger-auth (no KEDA trigger in these files)")
    if missing:
        print(f"render.py: nothing to substitute for: {', '.join(missing)}", file=sys.stderr)
        return 1
    sys.stdout.write("---\n".join(documents))
    return 0


if __name__ == "__main__":
    sys.exit(main())
