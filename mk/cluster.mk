# Cluster in a box (cluster/README.md): a real kube-apiserver, kube-controller-manager, etcd
# and KEDA operator on 127.0.0.1 and a real node (containerd, kubelet, kube-proxy,
# kube-scheduler, CoreDNS) on the bridge purchase0, built from the registries and cached under
# $(PURCHASE_CACHE_DIR)/cluster/ (outside the clone).
.PHONY: cluster-build cluster-up cluster-down cluster-status cluster-url cluster-zipkin-url load-node test-cluster cluster-images cluster-deploy bench-node soak-node

CLUSTER_KUBECONFIG := $(CURDIR)/.run/cluster/kubeconfig
CLUSTER_KUBECTL := $(PURCHASE_CACHE_DIR)/cluster/bin/kubectl
CLEAN ?=
BENCH_NODE_ARGS ?=
SOAK_NODE_ARGS ?=
# e.g. LOAD_NODE_ARGS='-n 20000 -d 120 --chart .run/node.png'
LOAD_NODE_ARGS ?=
CLUSTER_IS_UP = @$(PY) -m cluster status >/dev/null || { echo "the loopback cluster is not up: run make cluster-up first" >&2; exit 1; }

cluster-build: venv ## @node Build/install etcd, Kubernetes (apiserver, controller-manager, scheduler, kubelet, kube-proxy, kubectl), KEDA, CoreDNS, Knative Serving and the node's images (cached)
	$(PY) -m cluster build

cluster-up: venv ## @node Start the control plane, the real node (containerd + kubelet), Knative Serving and KEDA; first run builds everything
	$(PY) -m cluster up

cluster-images: venv ## @node Rebuild (if changed) the function and substitute images and load them into the node's containerd
	$(PY) -m cluster load

cluster-deploy: venv ## @node Deploy the whole system on the node: make deploy OVERLAY=node with the cluster's kubectl
	$(CLUSTER_IS_UP)
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(MAKE) --no-print-directory deploy KUBECTL=$(CLUSTER_KUBECTL) OVERLAY=node

test-cluster: venv ## @node Run tests/cluster on the node: make deploy, every pod real, KEDA 0->N->0, faults
	$(CLUSTER_IS_UP)
	@# With CoreDNS as the tests' resolver, so they reach Kafka and MongoDB by their Service names.
	PURCHASE_CLUSTER_TESTS=1 KUBECONFIG=$(CLUSTER_KUBECONFIG) KUBECTL=$(CLUSTER_KUBECTL) \
		$(PY) -m cluster run -- $(PY) -m pytest tests/cluster $(PYTEST_ARGS)

load-node: cluster-deploy ## @node On the node: load/scale.sh through the ingress, buy's Knative pods and KEDA's persist-purchase replicas in one chart -> load/scale-example-node.png (LOAD_NODE_ARGS=--help)
	@# CoreDNS as the resolver, so the lag is read from the broker by its in-cluster name.
	KUBECONFIG=$(CLUSTER_KUBECONFIG) PATH="$(dir $(CLUSTER_KUBECTL)):$$PATH" $(PY) -m cluster run -- \
	  load/scale.sh --url "$$($(PY) -m cluster url 2>/dev/null)" --allow-remote --knative-service buy \
	  --bootstrap "$$($(CLUSTER_KUBECTL) --kubeconfig=$(CLUSTER_KUBECONFIG) -n purchase get configmap purchase-config \
	    -o jsonpath='{.data.KAFKA_BOOTSTRAP_SERVERS}')" \
	  --tool python -n 12000 -c 16 -d 90 --chart load/scale-example-node.png $(LOAD_NODE_ARGS)

bench-node: cluster-deploy ## @node On the node: >=10 Knative cold starts each of buy/history (split), warm p50/p99, peak pods, last request -> 0 pods; 5 KEDA starts from zero of the consumer (split); its scale events 1->3->1 under load per assignor: pause, redeliveries, e2e p99 (~30 min; BENCH_NODE_ARGS=--help) -> bench-node-results.json
	@# With CoreDNS as the resolver: the consumer part writes to the broker by its in-cluster name.
	$(PY) -m cluster run -- $(PY) -m bench.node --json bench-node-results.json $(BENCH_NODE_ARGS)

soak-node: cluster-deploy ## @node All faults at once on the node: steady purchases to the buy Revision while a seeded plan deletes consumer, buy, leading-broker and mongodb-0 pods, SIGKILLs and freezes consumer containers, overlapping; exact counts (~12 min; SOAK_NODE_ARGS=--help)
	@# With CoreDNS as the resolver, so the soak reaches Kafka and MongoDB by their Service names.
	$(PY) -m cluster run -- $(PY) -m load.soak_node $(SOAK_NODE_ARGS)

cluster-status: venv ## @inspect Show the loopback cluster's processes, ports and KUBECONFIG
	$(PY) -m cluster status

cluster-url: venv ## @inspect Print the ingress address on the node (Traefik; send Host: purchase.local), after make cluster-deploy
	$(CLUSTER_IS_UP)
	@$(PY) -m cluster url

cluster-zipkin-url: venv ## @inspect Print the node's Zipkin (traces: UI at <url>/zipkin/; make trace ZIPKIN_URL=<url> ID=<eventId>), after make cluster-deploy
	$(CLUSTER_IS_UP)
	@$(PY) -m cluster url --zipkin

cluster-down: ## @node Stop the cluster by PID and put the host back as it was (CLEAN=1 also deletes certificates)
	@if [ -x $(PY) ]; then $(PY) -m cluster down $(if $(CLEAN),--clean); fi
