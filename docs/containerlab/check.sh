#!/usr/bin/env bash
# The netns lab's checks (docs/design/lab-addresses.md), on the containerlab topology ferrolb.clab.yml:
#   1. the client resolves the LoadBalancer IP by ARP and curl reaches it;
#   2. exactly one MAC answers (arping -c 3), the announcing node's eth1;
#   3. crash failover: freeze the announcing node (docker pause) and time kill → first ARP
#      from the new node at the client;
#   4. graceful failover: delete the announcing speaker pod (SIGTERM) and time it the same way.
#
# Run from anywhere, after `sudo containerlab deploy -t docs/containerlab/ferrolb.clab.yml`:
#   docs/containerlab/check.sh            # builds and loads the image first
#   SKIP_BUILD=1 docs/containerlab/check.sh
# Needs docker, kind, kubectl on a Linux host (the timing compares host and container clocks,
# which is only meaningful on one kernel). Unverified in FerroLB's CI: no Docker engine there.
set -euo pipefail

LAB=${LAB:-ferrolb}                        # containerlab lab name
CLUSTER=${CLUSTER:-ferrolb}                # kind cluster name = the k8s-kind node's name
CLIENT=${CLIENT:-clab-$LAB-client}         # containerlab names containers clab-<lab>-<node>
IMAGE=${IMAGE:-ghcr.io/ferrolb/ferrolb:0.1.0}
IFACE=eth1                                 # the LAN interface, on nodes and client
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

PAUSED=""
cleanup() {
  if [ -n "$PAUSED" ]; then docker unpause "$PAUSED" >/dev/null 2>&1 || true; fi
  docker exec "$CLIENT" pkill -x tcpdump >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
lower() { tr 'A-F' 'a-f'; }
cond() { # cond TYPE FIELD: a field of a ferrolb.io condition on Service default/echo
  kubectl get svc echo -o jsonpath="{.status.conditions[?(@.type==\"ferrolb.io/$1\")].$2}"
}
announcer() { cond Announced message | awk '$1 == "node" {print $2}'; }
node_mac() { docker exec "$1" cat "/sys/class/net/$IFACE/address" | lower; }
client_macs() { # distinct MACs answering `arping -c 3` for $VIP
  docker exec "$CLIENT" arping -c 3 -w 5 -I "$IFACE" "$VIP" 2>&1 \
    | grep -oiE '([0-9a-f]{2}:){5}[0-9a-f]{2}' | lower | sort -u || true
}
has_vip() { [ -n "$(kubectl get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')" ]; }
is_announced() { [ "$(cond Announced status)" = True ]; }
moved_from() { local n; n=$(announcer); [ -n "$n" ] && [ "$n" != "$1" ]; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: retry until the command succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 1
  done
}

# Starts a bounded ARP capture on the client (epoch timestamps, link-layer headers).
capture_start() {
  docker exec "$CLIENT" sh -c 'rm -f /tmp/arp.log; (timeout 60 tcpdump -l -nn -e -tt -i '"$IFACE"' arp >/tmp/arp.log 2>/dev/null &)'
  sleep 1
}
# Prints "<epoch> <mac>" of the first ARP frame after $1 that mentions $VIP and comes from
# neither $2 (the old announcer) nor the client itself; nothing if none yet.
first_new_arp() {
  docker exec "$CLIENT" cat /tmp/arp.log 2>/dev/null | lower \
    | awk -v t0="$1" -v old="$2" -v me="$CLIENT_MAC" -v vip="$VIP" '
        BEGIN { gsub(/\./, "\\.", vip); re = " " vip "([ ,]|$)" }
        $1 > t0 && $2 != old && $2 != me && $0 ~ re { print $1, $2; exit }'
}
# Waits (≤ 10 s) for the new announcer's first ARP after $1; prints "<ms> <mac>".
measure_takeover() {
  local t0=$1 old=$2 deadline=$((SECONDS + 10)) hit=""
  while [ -z "$hit" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no ARP from another node within 10 s"
    sleep 0.2
    hit=$(first_new_arp "$t0" "$old")
  done
  awk -v t0="$t0" -v t1="${hit%% *}" -v mac="${hit##* }" 'BEGIN { printf "%.0f %s\n", (t1 - t0) * 1000, mac }'
}

step "pre-flight"
for tool in docker kind kubectl; do command -v "$tool" >/dev/null || fail "$tool not found"; done
docker inspect "$CLIENT" >/dev/null 2>&1 || fail "container $CLIENT not found: deploy the topology first"
kind export kubeconfig --name "$CLUSTER" >/dev/null
kubectl get nodes -o wide
CLIENT_MAC=$(docker exec "$CLIENT" cat "/sys/class/net/$IFACE/address" | lower)

if [ -z "${SKIP_BUILD:-}" ]; then
  step "image $IMAGE"
  docker build -t "$IMAGE" "$ROOT"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
fi

step "install FerroLB"
kubectl apply -k "$ROOT/deploy/"
kubectl -n ferrolb-system rollout status deploy/ferrolb-controller --timeout=180s
kubectl -n ferrolb-system rollout status ds/ferrolb-speaker --timeout=180s
kubectl wait --for condition=Established --timeout=60s \
  crd/ipaddresspools.ferrolb.io crd/l2advertisements.ferrolb.io

step "pool, advertisement (eth1 only) and the echo Service"
kubectl apply -f "$HERE/lab-objects.yaml"
kubectl apply -f "$ROOT/deploy/examples/service.yaml"
kubectl rollout status deploy/echo --timeout=180s
wait_for 60 "an IP on Service echo" has_vip
VIP=$(kubectl get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
case "$VIP" in 203.0.113.*) ;; *) fail "Service IP $VIP is not from the lab pool" ;; esac
wait_for 60 "ferrolb.io/Announced=True" is_announced
NODE=$(announcer)
NODE_MAC=$(node_mac "$NODE")
echo "IP $VIP announced by $NODE ($IFACE $NODE_MAC): $(cond Announced message)"

step "1. the client resolves $VIP by ARP and reaches it"
docker exec "$CLIENT" ip neigh flush dev "$IFACE" >/dev/null 2>&1 || true
docker exec "$CLIENT" curl -sS --max-time 5 "http://$VIP/hostname" || fail "curl http://$VIP failed"
echo
NEIGH=$(docker exec "$CLIENT" ip neigh show "$VIP" dev "$IFACE")
echo "client neighbour entry: $NEIGH"
[ "$(printf '%s' "$NEIGH" | awk '{print $3}' | lower)" = "$NODE_MAC" ] \
  || fail "the client resolved $VIP to another MAC than $NODE's"

step "2. exactly one MAC answers"
MACS=$(client_macs)
echo "answering MACs: ${MACS:-none}"
[ "$(printf '%s\n' "$MACS" | grep -c .)" = 1 ] || fail "expected exactly one MAC, got: ${MACS:-none}"
[ "$MACS" = "$NODE_MAC" ] || fail "the answering MAC is not $NODE's $IFACE"

step "3. crash failover: docker pause $NODE"
capture_start
T0=$(now)
docker pause "$NODE" >/dev/null
PAUSED=$NODE
OUT=$(measure_takeover "$T0" "$NODE_MAC")
read -r MS NEW_MAC <<<"$OUT"
echo "crash failover: first ARP from the new node ($NEW_MAC) ${MS} ms after the pause"
wait_for 30 "the Announced condition to name another node" moved_from "$NODE"
NEW_NODE=$(announcer)
[ "$(node_mac "$NEW_NODE")" = "$NEW_MAC" ] || fail "the ARP came from another MAC than $NEW_NODE's"
# kube-proxy may still pick the echo pod on the frozen node until it is marked unready: retry.
docker exec "$CLIENT" curl -sS --max-time 2 --retry 10 --retry-delay 1 --retry-all-errors "http://$VIP/hostname" \
  || fail "curl after failover failed"
echo
[ "$(client_macs)" = "$NEW_MAC" ] || fail "after failover, not exactly one MAC ($NEW_MAC) answers"
docker unpause "$NODE" >/dev/null
PAUSED=""
echo "unpaused $NODE (it may take its IP back: the ranking per IP is fixed)"
wait_for 60 "speakers ready again" kubectl -n ferrolb-system rollout status ds/ferrolb-speaker --timeout=5s
sleep 3

step "4. graceful failover: delete the announcing speaker pod"
NODE=$(announcer)
NODE_MAC=$(node_mac "$NODE")
POD=$(kubectl -n ferrolb-system get pods -l app.kubernetes.io/component=speaker \
  --field-selector "spec.nodeName=$NODE" -o jsonpath='{.items[0].metadata.name}')
capture_start
T0=$(now)
kubectl -n ferrolb-system delete pod "$POD" --wait=false >/dev/null
OUT=$(measure_takeover "$T0" "$NODE_MAC")
read -r MS NEW_MAC <<<"$OUT"
echo "graceful failover: first ARP from the new node ($NEW_MAC) ${MS} ms after 'kubectl delete pod'"
echo "(includes the API server and kubelet delivering SIGTERM)"
kubectl -n ferrolb-system rollout status ds/ferrolb-speaker --timeout=120s >/dev/null

step "ok"
echo "all checks passed"
