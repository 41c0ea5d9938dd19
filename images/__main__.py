"""python -m images [all|base|functions|substitutes|flags]: build (or find cached) the images."""
from __future__ import annotations

import argparse
import shlex

from images import build


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m images", description=__doc__)
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "base", "functions", "substitutes", "flags"])
    args = parser.parse_args()
    if args.what == "flags":  # what `make build DOCKER=podman` needs on this machine
        print(shlex.join(build.podman_build_flags()))
        return
    refs = {"all": build.build_all, "base": lambda: [build.ensure_python_base()],
            "functions": build.build_function_images,
            "substitutes": lambda: list(build.build_substitutes().values())}[args.what]()
    for ref in refs:
        print(ref)


if __name__ == "__main__":
    main()
