#!/bin/sh
# Installs DANM's CNI plugins on the node (the danm-cni-installer DaemonSet runs it; see
# deploy/base/cni/installer.yaml), then waits until the pod is stopped. Each file is
# written beside its target and renamed over it, so the container runtime never reads a
# half-written plugin or configuration.
#
# The first 00-danm.conf of a node is written only once ipamd answers and serves a default
# network (`danm health`, on the danm-ipamd Service's plaintext `health` port): until then
# the node's pods keep the CNI that served them, instead of failing in danm. A node that
# already has 00-danm.conf gets it rewritten at once, so that an ipamd outage never holds
# an installer restart (or a new template) back. The configuration is never removed: that
# would make the node NotReady and break DEL for every pod on it.
#
# `install-cni.sh uninstall` (deploy/uninstall) does the opposite on a node: removes
# 00-danm.conf first (the runtime then calls the next configuration of the folder), then
# the CA bundle and token folder and the plugins, again whenever one comes back, and stays
# up (Ready) until deleted.
set -eu

bin_dir="${CNI_BIN_DIR:-/host/opt/cni/bin}"
conf_dir="${CNI_CONF_DIR:-/host/etc/cni/net.d}"
template="${DANM_CNI_TEMPLATE:-/etc/danm/cni/00-danm.conf.template}"
ca="${DANM_IPAMD_CA:-/etc/danm/ca/ca.crt}"
plugins="${DANM_PLUGINS_DIR:-/opt/danm/bin}"

# Ends at once on SIGTERM, also while waiting for ipamd.
trap 'exit 0' TERM INT
pause() {
  sleep "$1" &
  wait $!
}

if [ "${1:-}" = uninstall ]; then
  # Again every few seconds: an installer pod still stopping may write a file back.
  said=""
  while :; do
    if [ -e "$conf_dir/00-danm.conf" ] || [ -e "$conf_dir/danm" ] \
      || [ -e "$bin_dir/danm" ] || [ -e "$bin_dir/danm-ipam" ] || [ -z "$said" ]; then
      rm -f "$conf_dir/00-danm.conf" "$conf_dir/00-danm.conf.danm-tmp"
      rm -rf "$conf_dir/danm"
      for plugin in danm danm-ipam; do
        rm -f "$bin_dir/$plugin" "$bin_dir/$plugin.danm-tmp"
      done
      echo "install-cni: uninstalled: $conf_dir/00-danm.conf, $conf_dir/danm/ and danm, danm-ipam in $bin_dir removed; this node's new pods get the next configuration of $conf_dir"
      said=yes
    fi
    pause "${DANM_UNINSTALL_CHECK_SECONDS:-10}"
  done
fi

host="${DANM_IPAMD_SERVICE_HOST:-}"
port="${DANM_IPAMD_SERVICE_PORT_GRPC:-}"
health_port="${DANM_IPAMD_SERVICE_PORT_HEALTH:-}"
if [ -z "$host" ] || [ -z "$port" ] || [ -z "$health_port" ]; then
  # Kubernetes sets these only for Services that existed when the pod started.
  echo "install-cni: DANM_IPAMD_SERVICE_HOST/DANM_IPAMD_SERVICE_PORT_GRPC/DANM_IPAMD_SERVICE_PORT_HEALTH unset: the Service danm-ipamd (with ports grpc and health) did not exist when this pod started" >&2
  exit 1
fi
case "$host" in
  *:*) host="[$host]" ;; # an IPv6 ClusterIP in a URL
esac

install_file() { # source target mode
  cp "$1" "$2.danm-tmp"
  chmod "$3" "$2.danm-tmp"
  mv -f "$2.danm-tmp" "$2"
}

mkdir -p "$bin_dir" "$conf_dir/danm"
for plugin in danm danm-ipam; do
  install_file "$plugins/$plugin" "$bin_dir/$plugin" 0755
done
install_file "$ca" "$conf_dir/danm/ipamd-ca.crt" 0644
# With deploy/components/node-token: the pod's ServiceAccount token (renewed by the
# kubelet), which the plugin presents to ipamd as the node's identity; root's alone.
token="${DANM_NODE_TOKEN:-}"
if [ -n "$token" ]; then
  install_file "$token" "$conf_dir/danm/node-token" 0600
fi

if [ -e "$conf_dir/00-danm.conf" ]; then
  echo "install-cni: $conf_dir/00-danm.conf exists: rewritten at once, without waiting for ipamd"
else
  # The reason is logged when it changes, not at every poll.
  said=""
  until why=$("$plugins/danm" health "$host:$health_port" 2>&1); do
    if [ "$why" != "$said" ]; then
      echo "install-cni: 00-danm.conf not written yet, this node's pods keep their CNI: $why"
      said="$why"
    fi
    pause "${DANM_IPAMD_POLL_SECONDS:-5}"
  done
  echo "install-cni: $why"
fi

# With deploy/components/policer: the policer's gate socket, where the plugin waits for a
# new pod's network policy rules before it builds the pod's interfaces (empty: no policer).
policer="${DANM_POLICER_SOCKET:-}"
case "$policer" in
  *[!A-Za-z0-9/._-]*) echo "install-cni: DANM_POLICER_SOCKET=$policer: not a plain path" >&2; exit 1 ;;
  ""|/*) ;;
  *) echo "install-cni: DANM_POLICER_SOCKET=$policer: not an absolute path" >&2; exit 1 ;;
esac
if [ -n "$policer" ] && ! grep -q '${DANM_POLICER_SOCKET}' "$template"; then
  echo "install-cni: DANM_POLICER_SOCKET is set but $template has no \${DANM_POLICER_SOCKET}: its \"policer\" key would be missing and pods would not wait for their rules" >&2
  exit 1
fi

# Only these variables are replaced: the template is JSON, not a shell script.
sed -e "s|\${DANM_IPAMD_SERVICE_HOST}|$host|g" \
    -e "s|\${DANM_IPAMD_SERVICE_PORT_GRPC}|$port|g" \
    -e "s|\${DANM_POLICER_SOCKET}|$policer|g" \
    "$template" > "$conf_dir/00-danm.conf.danm-tmp"
# A variable this script does not know (a template newer than the image) would reach the
# plugin as text: refused here, where the installer's log says it, not at every pod's ADD.
if grep -q '${' "$conf_dir/00-danm.conf.danm-tmp"; then
  rm -f "$conf_dir/00-danm.conf.danm-tmp"
  echo "install-cni: $template holds a \${...} variable this installer does not replace; not installed" >&2
  exit 1
fi
chmod 0644 "$conf_dir/00-danm.conf.danm-tmp"
mv -f "$conf_dir/00-danm.conf.danm-tmp" "$conf_dir/00-danm.conf"
echo "install-cni: installed danm and danm-ipam in $bin_dir; $conf_dir/00-danm.conf calls ipamd at https://$host:$port"

# Stay up (a DaemonSet pod that exits is restarted), and keep the node's copy of the CA
# bundle in step with the ConfigMap: a CA rotation publishes the old and the new CA
# together (kubelet updates the mounted ConfigMap within a minute or so), and the plugin
# reads the file at every call.
while :; do
  pause "${DANM_CA_SYNC_SECONDS:-30}"
  if ! cmp -s "$ca" "$conf_dir/danm/ipamd-ca.crt"; then
    install_file "$ca" "$conf_dir/danm/ipamd-ca.crt" 0644
    echo "install-cni: the CA bundle changed; $conf_dir/danm/ipamd-ca.crt updated"
  fi
  if [ -n "$token" ] && ! cmp -s "$token" "$conf_dir/danm/node-token"; then
    install_file "$token" "$conf_dir/danm/node-token" 0600
  fi
done
