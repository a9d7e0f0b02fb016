#!/usr/bin/env bash
# L4 throughput of Sluice beside HAProxy (`mode tcp`) and a direct connection, in one run:
#
#   tcp   iperf3 through a TCP route (one stream, then 8 streams), bits/s received;
#   tls   TLS passthrough by SNI: socat pushes MB megabytes over TLS (OpenSSL) to a socat
#         TLS sink, through a passthrough route (Sluice `tls` listener, HAProxy
#         `req_ssl_sni`), MB/s. The handshake and the crypto happen at the ends; the
#         proxies only read the ClientHello and splice bytes.
#
# Layout on a 2-core machine: iperf3/socat client and server share CPU 0; the proxy under
# test runs alone on CPU 1 with ONE worker thread (Sluice `server.threads: 1`, HAProxy
# `nbthread 1`). Compare the candidates within one run: absolute figures drift on a
# shared machine.
#
# usage: benches/l4/run.sh [-d SECONDS] [-m MB] [-b SLUICE_BINARY]
#   default: 10 s per iperf3 run, 2048 MB per TLS transfer, target/release/sluice
# Needs: iperf3, haproxy, socat, openssl, python3, taskset (Debian packages).
set -u
D=10; MB=2048; BIN=target/release/sluice
while getopts "d:m:b:" o; do
  case $o in d) D=$OPTARG;; m) MB=$OPTARG;; b) BIN=$OPTARG;; *) exit 2;; esac
done
need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install -y $2" >&2; exit 2; }; }
need iperf3 iperf3; need haproxy haproxy; need socat socat; need openssl openssl; need taskset util-linux
[ -x "$BIN" ] || { echo "no Sluice binary at $BIN (cargo build --release)" >&2; exit 2; }
RUN=$(mktemp -d /tmp/l4bench.XXXXXX)
PIDS=()
stop() { kill -INT "$1" 2>/dev/null; for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
         kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; rm -rf "$RUN"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
              echo "nothing listens on $1" >&2; return 1; }

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$RUN/k.pem" -out "$RUN/c.pem" -days 1 \
  -subj /CN=db.example.com -addext subjectAltName=DNS:db.example.com 2>/dev/null

# The servers, on CPU 0.
taskset -c 0 iperf3 -s -p 15201 >/dev/null 2>&1 & PIDS+=($!)
taskset -c 0 socat -u OPENSSL-LISTEN:15443,reuseaddr,fork,cert="$RUN/c.pem",key="$RUN/k.pem",verify=0 \
  OPEN:/dev/null,wronly 2>/dev/null & PIDS+=($!)
wait_port 15201; wait_port 15443

cat >"$RUN/sluice.yaml" <<YAML
server: {threads: 1, pid_file: $RUN/sluice.pid, upgrade_sock: $RUN/sluice.sock}
admin: {listen: "127.0.0.1:19901"}
listeners:
  - {name: tcp, listen: "127.0.0.1:25201", protocol: tcp}
  - {name: tls, listen: "127.0.0.1:25443", protocol: tls}
upstreams:
  - {id: iperf, endpoints: [{address: "127.0.0.1:15201"}]}
  - {id: sink, endpoints: [{address: "127.0.0.1:15443"}]}
l4_routes:
  - {id: tcp, listeners: [tcp], upstream: iperf}
  - {id: tls, listeners: [tls], server_names: [db.example.com], tls: passthrough, upstream: sink}
YAML
cat >"$RUN/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend tcp
  bind 127.0.0.1:35201
  default_backend iperf
backend iperf
  server s1 127.0.0.1:15201
frontend tls
  bind 127.0.0.1:35443
  tcp-request inspect-delay 5s
  tcp-request content accept if { req_ssl_hello_type 1 }
  use_backend sink if { req_ssl_sni -i db.example.com }
backend sink
  server s1 127.0.0.1:15443
CFG

bits() { python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'; }
tcp_run() { # port streams
  taskset -c 0 iperf3 -c 127.0.0.1 -p "$1" -t "$D" -P "$2" -J 2>/dev/null | bits
}
tls_run() { # port -> MB/s
  local t0 t1
  t0=$(date +%s.%N)
  head -c "${MB}M" /dev/zero | taskset -c 0 socat -u - \
    OPENSSL:127.0.0.1:"$1",verify=0,snihost=db.example.com 2>/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(round($MB / ($t1 - $t0), 1))"
}

printf '%-10s %14s %14s %12s\n' candidate "tcp 1 stream" "tcp 8 streams" "tls MB/s"
for cand in direct haproxy sluice; do
  case $cand in
    direct) TCP=15201; TLS=15443;;
    haproxy) taskset -c 1 haproxy -f "$RUN/haproxy.cfg" -db >/dev/null 2>&1 & PX=$!; PIDS+=($PX); TCP=35201; TLS=35443
             wait_port 35201;;
    sluice) SLUICE_LOG=warn taskset -c 1 "$BIN" run --config "$RUN/sluice.yaml" >"$RUN/sluice.log" 2>&1 & PX=$!; PIDS+=($PX)
            TCP=25201; TLS=25443; wait_port 25201; wait_port 25443;;
  esac
  one=$(tcp_run $TCP 1); eight=$(tcp_run $TCP 8); tls=$(tls_run $TLS)
  printf '%-10s %11.2f Gb/s %11.2f Gb/s %12s\n' "$cand" "$(python3 -c "print($one/1e9)")" "$(python3 -c "print($eight/1e9)")" "$tls"
  echo "json {\"candidate\": \"$cand\", \"tcp_1_bps\": $one, \"tcp_8_bps\": $eight, \"tls_passthrough_mb_s\": $tls}"
  [ "$cand" != direct ] && stop "$PX"
done
