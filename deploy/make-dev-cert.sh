#!/usr/bin/env bash
# A self-signed certificate for trying the compose stack; use your hospital CA's certificate in production.
set -euo pipefail
dir="$(dirname "$0")/nginx/tls"
mkdir -p "$dir"
openssl req -x509 -newkey rsa:3072 -nodes -days 30 -subj "/CN=${1:-medsearch.local}" \
  -keyout "$dir/medsearch.key" -out "$dir/medsearch.crt"
chmod 600 "$dir/medsearch.key"
echo "wrote $dir/medsearch.crt and $dir/medsearch.key"
