#!/usr/bin/env bash
# See the whole suite: a Kubernetes cluster on this machine (the real control plane with
# kube-scheduler, two nodes as network namespaces), ipamd x3, svcwatcher, netwatcher on every
# node, with DANM's svcwatcher demo applied; prints the pods, their interfaces, showalloc
# and the EndpointSlices, then stays up until Ctrl-C. Needs root (network namespaces) and
# what ./test.sh builds (the control plane in ~/.cache/danm-rs/k8s; run ./test.sh first on a
# fresh machine, or testkit/k8s/build.sh).
#
# ./demo.sh --real-node: deploy/crds and deploy/base applied unchanged on a real node of this
# machine (kubelet and containerd 1.6, images built here), a pod through the installed danm;
# says why when the machine cannot run one (root, containerd and runc, nftables,
# busybox-static, the reference CNI plugins: what .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet --workspace --bins
exec target/debug/e2e-demo "$@"
