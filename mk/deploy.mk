# Container images and the Kubernetes deployment (k8s/README.md, "Deploy to minikube").
#
# Images are $(REGISTRY)/<function>:$(TAG). The default registry name, dev.local, is one
# Knative does not try to resolve to a digest, so images copied in with
# `minikube image load` (make minikube-images) deploy without a registry. For a real one:
#   make push REGISTRY=ghcr.io/you/purchase TAG=1.0.0 && make deploy REGISTRY=... TAG=...
# The manifests are a kustomize base with overlays (k8s/); every deploy target is one
# `kubectl apply -k` (kubectl's own kustomize) of k8s/overlays/$(OVERLAY) with the chosen
# images, so no file is edited.

# The names the base manifests give the function images, which REGISTRY/TAG replace.
BASE_REGISTRY := dev.local/purchase
REGISTRY ?= $(BASE_REGISTRY)
TAG ?= dev
# Where it runs: a folder of k8s/overlays/. minikube (the base as it is), node (the cluster in a
# box: local Kafka/MongoDB substitutes, short KEDA timings), registry-example (a model to copy).
OVERLAY ?= minikube
DOCKER ?= docker
KUBECTL ?= kubectl
MINIKUBE ?= minikube
# deploy-infra waits (up to WAIT_TIMEOUT each) for Kafka, MongoDB and the topic Job, so
# the functions deployed next find them; DEPLOY_WAIT= skips that (e.g. a control plane
# without nodes, where those pods never run).
DEPLOY_WAIT ?= 1
WAIT_TIMEOUT ?= 300s
# Non-empty: KEDA logs in to Kafka with k8s/components/kafka-auth (SASL/TLS); see k8s/README.md.
KAFKA_AUTH ?=
# Empty: functions/Dockerfile's own base, python:3.11-slim. Where Docker Hub is out of reach,
# `make build-base` builds a local stand-in and prints how to build on it, e.g.
#   make build DOCKER=podman PYTHON_IMAGE=localhost/purchase/python-base:3.11-bookworm \
#     DOCKER_BUILD_FLAGS="$$(.venv/bin/python -m images flags)"
PYTHON_IMAGE ?=
# Extra `$(DOCKER) build` flags (podman on this kind of machine: runtime, ulimits, network).
DOCKER_BUILD_FLAGS ?=
BUILD_FLAGS = $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(DOCKER_BUILD_FLAGS)

K8S_NS := purchase
FUNCTIONS := buy history persist-purchase
image = $(REGISTRY)/$(1):$(TAG)
# Each target applies its own objects out of the whole overlay, picked by the label every
# object carries (tests/k8s checks that each belongs to exactly one target).
NAME_LABEL := app.kubernetes.io/name
comma := ,
empty :=
space := $(empty) $(empty)
INFRA_SELECTOR := $(NAME_LABEL) notin ($(subst $(space),$(comma),$(FUNCTIONS)))

# What a target hands to `kubectl apply -k`: a throw-away kustomization in .run/deploy/<target>/
# (git-ignored, rewritten each time) that takes k8s/overlays/$(OVERLAY), adds the kafka-auth
# component when $(1) is non-empty, and names the function images $(REGISTRY)/<fn>:$(TAG)
# instead of the base's names (an overlay that renames them itself, like registry-example,
# keeps its own).
DEPLOY_DIR = .run/deploy/$@
kustomization = mkdir -p $(DEPLOY_DIR) && { \
	printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\n' \
	  ../../../k8s/overlays/$(OVERLAY); \
	$(if $(1),printf 'components:\n  - ../../../k8s/components/kafka-auth\n';) \
	printf 'images:\n'; \
	$(foreach fn,$(FUNCTIONS),printf '  - {name: %s, newName: %s, newTag: "%s"}\n' \
	  $(BASE_REGISTRY)/$(fn) $(REGISTRY)/$(fn) $(TAG);) \
	} > $(DEPLOY_DIR)/kustomization.yaml

.PHONY: build build-buy build-history build-persist-purchase lock build-base build-local \
        push push-buy push-history push-persist-purchase minikube-images \
        deploy deploy-infra deploy-buy deploy-history deploy-persist-purchase undeploy k8s-status

build: build-buy build-history build-persist-purchase ## @deploy Build the three function images

# One parametrised functions/Dockerfile: FUNCTION is the folder under functions/, --target the
# kind of image (http-function: functions-framework; consumer: python consumer.py).
build-buy: ## @deploy Build the buy image, $(REGISTRY)/buy:$(TAG) (functions/Dockerfile, context: repository root)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/Dockerfile --build-arg FUNCTION=buy --target http-function -t $(call image,buy) .

build-history: ## @deploy Build the history image, $(REGISTRY)/history:$(TAG)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/Dockerfile --build-arg FUNCTION=history --target http-function -t $(call image,history) .

build-persist-purchase: ## @deploy Build the persist-purchase consumer image, $(REGISTRY)/persist-purchase:$(TAG)
	$(DOCKER) build $(BUILD_FLAGS) -f functions/Dockerfile --build-arg FUNCTION=persist_purchase --target consumer -t $(call image,persist-purchase) .

build-base: venv ## @deploy Build (or find cached) with podman the local python:3.11-slim stand-in for make build where Docker Hub is out of reach (mmdebstrap)
	@$(PY) -m images base
	@echo "build on it: make build DOCKER=podman PYTHON_IMAGE=localhost/purchase/python-base:3.11-bookworm DOCKER_BUILD_FLAGS=\"$$($(PY) -m images flags)\""

build-local: venv ## @deploy Build (cached) with podman every image the node runs: the functions on the local base and the Kafka/MongoDB substitutes (images/)
	$(PY) -m images all

lock: venv ## @deploy Recompile functions/*/requirements.lock (every transitive pin, with sha256) from requirements.txt
	@for fn in buy history persist_purchase; do \
	  $(PY) -m uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 functions/$$fn/requirements.txt -o functions/$$fn/requirements.lock \
	    || exit 1; \
	done

push: push-buy push-history push-persist-purchase ## @deploy Build and push the three images to $(REGISTRY)

push-buy: build-buy ## @deploy Build and push the buy image
	$(DOCKER) push $(call image,buy)

push-history: build-history ## @deploy Build and push the history image
	$(DOCKER) push $(call image,history)

push-persist-purchase: build-persist-purchase ## @deploy Build and push the persist-purchase image
	$(DOCKER) push $(call image,persist-purchase)

minikube-images: ## @deploy Copy the three built images into minikube's container runtime
	$(MINIKUBE) image load $(call image,buy)
	$(MINIKUBE) image load $(call image,history)
	$(MINIKUBE) image load $(call image,persist-purchase)

deploy: deploy-infra ## @deploy Deploy everything to k8s/overlays/$(OVERLAY) (minikube; OVERLAY=node: the cluster in a box): infra, then the functions
	$(MAKE) --no-print-directory deploy-buy deploy-history deploy-persist-purchase

deploy-infra: ## @deploy Apply namespace, config, Kafka (KRaft), MongoDB and its app user, topic Job, NetworkPolicies, the ingress's gateway Service (node: Traefik); wait for them
	$(kustomization)
	$(KUBECTL) apply -k $(DEPLOY_DIR) -l '$(INFRA_SELECTOR)'
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) rollout status statefulset/kafka --timeout=$(WAIT_TIMEOUT))
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) rollout status statefulset/mongodb --timeout=$(WAIT_TIMEOUT))
	@# The node overlay brings its own ingress (Traefik), which the Knative Routes need to be Ready.
	$(if $(DEPLOY_WAIT),$(if $(filter node,$(OVERLAY)),$(KUBECTL) -n traefik rollout status deployment/traefik \
	  --timeout=$(WAIT_TIMEOUT)))
	@# And its OpenID Connect provider, whose keys buy and history fetch as they start.
	$(if $(DEPLOY_WAIT),$(if $(filter node,$(OVERLAY)),$(KUBECTL) -n purchase-auth rollout status deployment/oidc \
	  --timeout=$(WAIT_TIMEOUT)))
	@# And its trace backend, so the first purchases' spans are kept.
	$(if $(DEPLOY_WAIT),$(if $(filter node,$(OVERLAY)),$(KUBECTL) -n purchase-trace rollout status deployment/zipkin \
	  --timeout=$(WAIT_TIMEOUT)))
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) wait job/kafka-create-topics \
	  --for=condition=complete --timeout=$(WAIT_TIMEOUT))
	@# The functions' MongoDB user; the Job may already be gone (ttlSecondsAfterFinished) on a redeploy.
	$(if $(DEPLOY_WAIT),$(KUBECTL) -n $(K8S_NS) wait job/mongodb-app-user --for=condition=complete \
	  --timeout=$(WAIT_TIMEOUT) || ! $(KUBECTL) -n $(K8S_NS) get job/mongodb-app-user -o name)

deploy-buy: ## @deploy Apply only buy: its Knative Service (image $(REGISTRY)/buy:$(TAG)) and Ingress
deploy-history: ## @deploy Apply only history: its Knative Service (image $(REGISTRY)/history:$(TAG)) and Ingress
deploy-persist-purchase: ## @deploy Apply only persist-purchase: its Deployment (replicas 0), KEDA ScaledObject (KAFKA_AUTH=1: login)
$(addprefix deploy-,$(FUNCTIONS)): deploy-%:
	$(call kustomization,$(KAFKA_AUTH))
	$(KUBECTL) apply -k $(DEPLOY_DIR) -l $(NAME_LABEL)=$*

undeploy: ## @deploy Delete what `make deploy` applied; the namespace and the data volumes stay
	@# The ScaledObject first, so KEDA lets go of the Deployment before it goes (kustomize lists Deployments first).
	-$(KUBECTL) -n $(K8S_NS) delete --ignore-not-found scaledobject.keda.sh/persist-purchase
	$(call kustomization,1)
	@# Everything but the Namespace, whose name label is its name.
	-$(KUBECTL) delete --ignore-not-found -k $(DEPLOY_DIR) -l '$(NAME_LABEL)!=$(K8S_NS)'

k8s-status: ## @inspect Show the purchase namespace: Knative Services, KEDA scaling, pods, jobs, ingress
	-$(KUBECTL) -n $(K8S_NS) get ksvc,scaledobject,hpa
	$(KUBECTL) -n $(K8S_NS) get deployment,statefulset,job,pod,pvc,service,ingress
