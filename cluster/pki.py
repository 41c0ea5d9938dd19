"""Certificates, the service-account key pair and kubeconfigs for the loopback cluster.

Everything is made with the openssl command line into one folder and reused while it is
there (`make cluster-down CLEAN=1` deletes it). One CA signs every certificate:

- the API server's serving certificate (127.0.0.1, localhost and the in-cluster names);
- client certificates: ``admin`` (group system:masters, used by kubectl, `make deploy` and
  the test harness), ``system:kube-controller-manager`` (the identity the bootstrap RBAC
  policy grants the controllers' rights to) and ``keda-operator`` (bound to KEDA's own
  ClusterRole from its module, so the operator runs with the rights its chart gives it);
- a front-proxy client certificate for the aggregation layer;
- the gRPC certificate KEDA's operator serves its metrics service with (it will not start
  without one), and the metrics adapter's serving/gRPC-client certificate.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

DAYS = "3650"

SERVER_SANS = ",".join([
    "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
])
KEDA_SANS = ",".join([
    "IP:127.0.0.1", "DNS:localhost", "DNS:keda-operator", "DNS:keda-operator.keda",
    "DNS:keda-operator.keda.svc", "DNS:keda-operator.keda.svc.cluster.local",
])

ADAPTER_SANS = ",".join([
    "IP:127.0.0.1", "DNS:localhost", "DNS:keda-metrics-apiserver", "DNS:keda-metrics-apiserver.keda",
    "DNS:keda-metrics-apiserver.keda.svc", "DNS:keda-metrics-apiserver.keda.svc.cluster.local",
])

# name -> (subject, SANs or None for a client certificate)
CERTS = {
    "apiserver": ("/CN=kube-apiserver", SERVER_SANS),
    "admin": ("/O=system:masters/CN=admin", None),
    "controller-manager": ("/CN=system:kube-controller-manager", None),
    "keda-operator": ("/CN=keda-operator", None),
    "front-proxy-client": ("/CN=front-proxy-client", None),
    "keda-grpc": ("/CN=keda-operator", KEDA_SANS),
    # The metrics adapter's serving certificate (the aggregator checks the Service's DNS name)
    # and its gRPC client certificate towards the operator.
    "keda-adapter": ("/CN=keda-metrics-apiserver", ADAPTER_SANS),
}


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _sign(pki: Path, name: str, subject: str, sans: str | None) -> None:
    if (pki / f"{name}.crt").exists():
        return
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    usage = "serverAuth,clientAuth" if sans else "clientAuth"
    ext = ["keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={usage}",
           "basicConstraints=critical,CA:FALSE"]
    if sans:
        ext.append(f"subjectAltName={sans}")
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", DAYS, "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def ensure_pki(pki: Path, extra: dict | None = None) -> Path:
    """Create (once) the CA, every certificate above (and `extra`, same shape) and the
    service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    if not (pki / "ca.crt").exists():
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=purchase-cluster-ca", "-days", DAYS,
                 "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", "ca.crt", cwd=pki)
    for name, (subject, sans) in {**CERTS, **(extra or {})}.items():
        _sign(pki, name, subject, sans)
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    # KEDA's operator and adapter each read ca.crt, tls.crt and tls.key from a --cert-dir.
    for folder, name in (("keda-certs", "keda-grpc"), ("keda-adapter-certs", "keda-adapter")):
        certs = pki / folder
        certs.mkdir(exist_ok=True)
        for src, dst in (("ca.crt", "ca.crt"), (f"{name}.crt", "tls.crt"), (f"{name}.key", "tls.key")):
            if not (certs / dst).exists():
                (certs / dst).write_bytes((pki / src).read_bytes())
    return pki


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> Path:
    """A kubeconfig that names files (not inline data), for the given client certificate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: purchase-local
  cluster:
    server: {server}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: {user}
  user:
    client-certificate: {pki / f'{user}.crt'}
    client-key: {pki / f'{user}.key'}
contexts:
- name: purchase-local
  context:
    cluster: purchase-local
    user: {user}
current-context: purchase-local
""")
    path.chmod(0o600)
    return path
