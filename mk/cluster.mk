# Cluster in a box (cluster/README.md): a real kube-apiserver, kube-controller-manager, etcd
# and KEDA operator on 127.0.0.1 and a real node (containerd, kubelet, kube-proxy,
# kube-scheduler, CoreDNS) on the bridge purchase0, built from the registries and cached under
# $(PURCHASE_CACHE_DIR)/cluster/ (outside the clone).
.PHONY: cluster-build cluster-up cluster-down cluster-status test-cluster

CLUSTER_KUBECONFIG := $(CURDIR)/.run/cluster/kubeconfig
CLUSTER_KUBECTL := $(PURCHASE_CACHE_DIR)/cluster/bin/kubectl
CLEAN ?=

cluster-build: venv ## Build/install etcd, kube-apiserver, kube-controller-manager, kubectl and KEDA (cached)
	$(PY) -m cluster build

cluster-up: venv ## Start the loopback Kubernetes control plane + KEDA operator (first run builds them)
	$(PY) -m cluster up

cluster-down: ## Stop the loopback cluster by PID (CLEAN=1 also deletes its certificates)
	@if [ -x $(PY) ]; then $(PY) -m cluster down $(if $(CLEAN),--clean); fi

cluster-status: venv ## Show the loopback cluster's processes, ports and KUBECONFIG
	$(PY) -m cluster status

test-cluster: venv ## Run tests/cluster (make deploy, KEDA scale from zero) against `make cluster-up`
	@$(PY) -m cluster status >/dev/null || { echo "the loopback cluster is not up: run make cluster-up first" >&2; exit 1; }
	PURCHASE_CLUSTER_TESTS=1 KUBECONFIG=$(CLUSTER_KUBECONFIG) KUBECTL=$(CLUSTER_KUBECTL) \
		$(PY) -m pytest tests/cluster $(PYTEST_ARGS)
