# Container images and the Kubernetes deployment (k8s/README.md, "Deploy to minikube").
#
# Images are $(REGISTRY)/<function>:$(TAG). The default registry name, dev.local, is one
# Knative does not try to resolve to a digest, so images copied in with
# `minikube image load` (make minikube-load) deploy without a registry. For a real one:
#   make push REGISTRY=ghcr.io/you/purchase TAG=1.0.0 && make deploy REGISTRY=... TAG=...
# The manifests carry the default names; deploy-<fn> swaps in the chosen image on the way
# to `kubectl apply` (k8s/render.py), so no file is edited.

REGISTRY ?= dev.local/purchase
TAG ?= dev
DOCKER ?= docker
KUBECTL ?= kubectl
MINIKUBE ?= minikube
# deploy-infra waits (up to WAIT_TIMEOUT each) for Kafka, MongoDB and the topic Job, so
# the functions deployed next find them; DEPLOY_WAIT= skips that (e.g. a control plane
# without nodes, where those pods never run).
DEPLOY_WAIT ?= 1
WAIT_TIMEOUT ?= 300s
# Non-empty: KEDA logs in to Kafka with k8s/keda/optional/ (SASL/TLS); see k8s/README.md.
KAFKA_AUTH ?=
# Non-empty: another image for the Kafka / MongoDB StatefulSets (and the topic Job), swapped in
# on the way to kubectl like the function images; the node in a box uses its local
# substitutes (cluster/README.md) because apache/kafka and mongo cannot be pulled there.
KAFKA_IMAGE ?=
MONGODB_IMAGE ?=
# Empty: the Dockerfiles' own base, python:3.11-slim. Where Docker Hub is out of reach,
# `make base-image` builds a local stand-in and prints how to build on it, e.g.
#   make build DOCKER=podman PYTHON_IMAGE=localhost/purchase/python-base:3.11-bookworm \
#     DOCKER_BUILD_FLAGS="$$(.venv/bin/python -m images flags)"
PYTHON_IMAGE ?=
# Extra `$(DOCKER) build` flags (podman on this kind of machine: runtime, ulimits, network).
DOCKER_BUILD_FLAGS ?=
BUILD_FLAGS = $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(DOCKER_BUILD_FLAGS)

K8S_NS := purchase
image = $(REGISTRY)/$(1):$(TAG)
RENDER = set -o pipefail; $(PYTHON) k8s/render.py

.PHONY: build build-buy build-history build-persist-purchase lock base-image images \
        push push-buy push-history push-persist-purchase minikube-load \
        deploy deploy-infra deploy-buy deploy-history deploy-persist-purchase undeploy status

build: build-buy build-history build-persist-purchase ## Build the three function images

build-buy: ## Build the buy image, $(REGISTRY)/buy:$(TAG) (context: repository root)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/buy/Dockerfile -t $(call image,buy) .

build-history: ## Build the history image, $(REGISTRY)/history:$(TAG)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/history/Dockerfile -t $(call image,history) .

build-persist-purchase: ## Build the persist-purchase consumer image, $(REGISTRY)/persist-purchase:$(TAG)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/persist_purchase/Dockerfile -t $(call image,persist-purchase) .

lock: venv ## Recompile functions/*/requirements.lock (every transitive pin, with sha256) from requirements.txt
	@for fn in buy history persist_purchase; do \
	  $(PY) -m uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 functions/$$fn/requirements.txt -o functions/$$fn/requirements.lock \
	    || exit 1; \
	done

base-image: venv ## Build (or find cached) the local python:3.11-slim stand-in with podman (mmdebstrap, no Docker Hub)
	@$(PY) -m images base
	@echo "build on it: make build DOCKER=podman PYTHON_IMAGE=localhost/purchase/python-base:3.11-bookworm DOCKER_BUILD_FLAGS=\"$$($(PY) -m images flags)\""

images: venv ## Build (cached) with podman the function images on the local base and the node's substitutes (images/)
	$(PY) -m images all

push: push-buy push-history push-persist-purchase ## Build and push the three images to $(REGISTRY)

push-buy: build-buy ## Build and push the buy image
	$(DOCKER) push $(call image,buy)

push-history: build-history ## Build and push the history image
	$(DOCKER) push $(call image,history)

push-persist-purchase: build-persist-purchase ## Build and push the persist-purchase image
	$(DOCKER) push $(call image,persist-purchase)

minikube-load: ## Copy the three built images into minikube's container runtime
	$(MINIKUBE) image load $(call image,buy)
	$(MINIKUBE) image load $(call image,history)
	$(MINIKUBE) image load $(call image,persist-purchase)

deploy: deploy-infra ## Deploy everything: infra, then the three functions (REGISTRY/TAG pick the images)
	$(MAKE) --no-print-directory deploy-buy deploy-history deploy-persist-purchase

deploy-infra: ## Apply namespace, config, Kafka (KRaft), MongoDB, topic Job, Kourier gateway; wait for them
	$(KUBECTL) apply -f k8s/namespace.yaml
	$(RENDER) $(if $(KAFKA_IMAGE),--image kafka=$(KAFKA_IMAGE)) $(if $(MONGODB_IMAGE),--image mongo=$(MONGODB_IMAGE)) \
	  k8s/config/*.yaml k8s/mongodb/*.yaml k8s/kafka/*.yaml k8s/ingress/knative-gateway-service.yaml \
	  | $(KUBECTL) apply -f -
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) rollout status statefulset/kafka --timeout=$(WAIT_TIMEOUT))
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) rollout status statefulset/mongodb --timeout=$(WAIT_TIMEOUT))
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) wait job/kafka-create-topics \
	  --for=condition=complete --timeout=$(WAIT_TIMEOUT))

deploy-buy: ## Apply only buy: its Knative Service (image $(REGISTRY)/buy:$(TAG)) and Ingress
	$(RENDER) --image buy=$(call image,buy) k8s/knative/buy.yaml k8s/ingress/buy-ingress.yaml \
	  | $(KUBECTL) apply -f -

deploy-history: ## Apply only history: its Knative Service (image $(REGISTRY)/history:$(TAG)) and Ingress
	$(RENDER) --image history=$(call image,history) k8s/knative/history.yaml k8s/ingress/history-ingress.yaml \
	  | $(KUBECTL) apply -f -

deploy-persist-purchase: ## Apply only persist-purchase: its Deployment (replicas 0) and KEDA ScaledObject
	$(RENDER) --image persist-purchase=$(call image,persist-purchase) \
	  $(if $(KAFKA_AUTH),--trigger-auth kafka-client-auth k8s/keda/optional/kafka-triggerauthentication.yaml) \
	  k8s/keda/persist-purchase-deployment.yaml k8s/keda/persist-purchase-scaledobject.yaml \
	  | $(KUBECTL) apply -f -

undeploy: ## Delete what `make deploy` applied; the namespace and the data volumes stay
	-$(KUBECTL) delete --ignore-not-found -f k8s/keda/persist-purchase-scaledobject.yaml \
	  -f k8s/keda/optional/kafka-triggerauthentication.yaml
	-$(KUBECTL) delete --ignore-not-found -f k8s/keda/persist-purchase-deployment.yaml -f k8s/ingress/ -f k8s/knative/
	-$(KUBECTL) delete --ignore-not-found -f k8s/kafka/ -f k8s/mongodb/ -f k8s/config/

status: ## Show the purchase namespace: Knative Services, KEDA scaling, pods, jobs, ingress
	-$(KUBECTL) -n $(K8S_NS) get ksvc,scaledobject,hpa
	$(KUBECTL) -n $(K8S_NS) get deployment,statefulset,job,pod,pvc,service,ingress
