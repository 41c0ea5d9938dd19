"""python -m cluster {build|up|down|status|env}: the loopback control plane (cluster/README.md)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build/install etcd, Kubernetes, KEDA, CoreDNS and the node's images")
    sub.add_parser("up", help="start the control plane and KEDA's operator on 127.0.0.1")
    down = sub.add_parser("down", help="stop everything `up` started, by PID")
    down.add_argument("--clean", action="store_true", help="also delete .run/cluster (certificates, etcd data)")
    sub.add_parser("status", help="show the processes, ports and KUBECONFIG")
    sub.add_parser("env", help="print `export KUBECONFIG=... KUBECTL=...` for a shell")
    url = sub.add_parser("url", help="print the ingress address (the node's, reachable from this machine only)")
    url.add_argument("--zipkin", action="store_true", help="print the node's Zipkin (traces: API and UI) instead")
    check = sub.add_parser("hostcheck", help="save, or compare with, what the node changes on the host")
    check.add_argument("--save", metavar="FILE", help="write the host's state to FILE (before cluster-up)")
    check.add_argument("--compare", metavar="FILE", help="fail if the host differs from FILE (after cluster-down)")
    sub.add_parser("load", help="build (if changed) the images and load them into the node's containerd")
    run = sub.add_parser("run", help="run a command with the cluster's DNS (CoreDNS) as its resolver")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)

    from . import build, control, node
    if args.command == "build":
        # The binaries and the images share nothing but the cores: side by side, one's downloads
        # and mmdebstrap waits are the other's compile time.
        with ThreadPoolExecutor(max_workers=2) as pool:
            binaries = pool.submit(build.ensure_all)
            images = pool.submit(lambda: control.node_images()["refs"])
            for name, path in binaries.result().items():
                print(f"{name:<26} {path}")
            for ref in images.result():
                print(f"{'image':<26} {ref}")
        return 0
    if args.command == "up":
        control.up()
        return 0
    if args.command == "down":
        control.down()
        if args.clean:
            shutil.rmtree(control.RUN, ignore_errors=True)
        return 0
    if args.command == "status":
        return control.status()
    if args.command == "hostcheck":
        now = node.Node(control.RUN).host_fingerprint()
        if args.save:
            Path(args.save).write_text(json.dumps(now, indent=2))
            return 0
        before = json.loads(Path(args.compare).read_text())
        changed = {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k]}
        for key, (was, is_now) in changed.items():
            print(f"host state changed: {key}: before {was!r}, now {is_now!r}", file=sys.stderr)
        print("host state as before cluster-up" if not changed else "host state NOT restored")
        return 1 if changed else 0
    if args.command == "load":
        images = control.node_images()
        node.Node(control.RUN).load_images(images["refs"], images["podman_env"])
        return 0
    if args.command == "run":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            parser.error("run needs a command")
        os.execvp("unshare", node.Node(control.RUN).with_cluster_dns(argv))
    if args.command == "url":
        from .observe import INGRESS_HOST, Kube, ingress_url, zipkin_url
        if not control.is_up():
            print("the cluster is not up: make cluster-up", file=sys.stderr)
            return 1
        if args.zipkin:
            url = zipkin_url(Kube(control.read_state()))
            print(url)
            print(f"# UI {url}/zipkin/; a purchase's trace: make trace ZIPKIN_URL={url} ID=<event id>", file=sys.stderr)
            return 0
        url = ingress_url(Kube(control.read_state()))
        print(url)
        print(f"# e.g. curl -s {url}/api/user/555/purchases -H 'Host: {INGRESS_HOST}'", file=sys.stderr)
        return 0
    if args.command == "env":
        print(f"export KUBECONFIG={control.KUBECONFIG} KUBECTL={build.BIN / 'kubectl'}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
