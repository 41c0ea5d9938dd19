"""Container images built locally with podman (images/build.py)."""
