"""A Kubernetes control plane on 127.0.0.1 built from the registries: see cluster/README.md."""
