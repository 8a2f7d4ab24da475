#!/usr/bin/env bash
# Starts ipamd on its embedded store with the example networks of deploy/examples/, shows it
# serving allocations (a pod attached to two networks, single and dual stack, and what
# showalloc then reports), and leaves it running in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -p danm-ipamd --bins
bin=target/release
state=$(mktemp -d)
addr=127.0.0.1:50051
"$bin/ipamd" --store "file:$state/ipamd.redb" --networks deploy/examples --listen "$addr" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 50); do "$bin/ipamctl" --ipamd "$addr" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/ipamctl" --ipamd "$addr" status
echo "--- attach pod default/web-0 to two networks"
"$bin/ipamctl" --ipamd "$addr" attach -n default --pod web-0 --container-id 3f2a9c1b7d4e \
  --interfaces '[{"network":"internal","ip":"dynamic"},{"clusterNetwork":"external","ip":"dynamic","ip6":"dynamic"}]'
echo "--- a pod with no annotation gets the default ClusterNetwork"
"$bin/ipamctl" --ipamd "$addr" attach -n default --pod plain-0 --container-id 77aa01
echo "--- a static address"
"$bin/ipamctl" --ipamd "$addr" allocate --dnet internal --container-id 9b1e --ifname eth0 --ip 10.240.1.150 --pod static-0
echo "--- showalloc --dnet internal"
"$bin/showalloc" --ipamd "$addr" --dnet internal -n default
echo "--- showalloc --cnet external -6"
"$bin/showalloc" --ipamd "$addr" --cnet external -6
echo "ipamd is serving on $addr (state in $state); Ctrl-C to stop."
wait $pid
