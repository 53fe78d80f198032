#!/usr/bin/env bash
# Local certificate authority and one certificate per service identity, for mutual TLS between the
# platform's services (docs/identity.md). Idempotent: an existing CA and the certificates it signed are
# kept while they stay valid for another 30 days; anything missing, expiring or signed by another CA is
# (re)issued.
#   scripts/certs.sh [DIR]      DIR defaults to $INTERNAL_TLS__PKI_DIR or .var/pki
# Extra subject alternative names for every certificate (deployments): VOICE_CERT_HOSTS="dns1,10.0.0.5".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DIR=${1:-${INTERNAL_TLS__PKI_DIR:-.var/pki}}
IDENTITIES=(control agent bridge worker tts gateway client)
DAYS=825
RENEW_BEFORE=2592000 # 30 days, in seconds

command -v openssl >/dev/null 2>&1 || die "openssl is required (Debian package openssl)"
mkdir -p "$DIR"
chmod 700 "$DIR"
umask 077
# Serialise concurrent set-ups (services.sh and the test suite may run this at the same time).
exec 9>"$DIR/.lock"
flock 9

valid() { [ -s "$1" ] && openssl x509 -noout -checkend "$RENEW_BEFORE" -in "$1" >/dev/null 2>&1; }

if ! valid "$DIR/ca.crt" || [ ! -s "$DIR/ca.key" ]; then
  step "creating the local CA in $DIR"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
    -keyout "$DIR/ca.key.tmp" -out "$DIR/ca.crt.tmp" -subj "/O=voice-platform/CN=voice-platform local CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  mv "$DIR/ca.key.tmp" "$DIR/ca.key"
  mv "$DIR/ca.crt.tmp" "$DIR/ca.crt"
fi

sans() {
  local id=$1 out="DNS:$id,DNS:localhost,IP:127.0.0.1,IP:::1,URI:spiffe://voice-platform/$id" h
  IFS=',' read -ra extra <<<"${VOICE_CERT_HOSTS:-}"
  for h in "${extra[@]}"; do
    [ -n "$h" ] || continue
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then out+=",IP:$h"; else out+=",DNS:$h"; fi
  done
  echo "$out"
}

issued=()
for id in "${IDENTITIES[@]}"; do
  crt="$DIR/$id.crt" key="$DIR/$id.key"
  if valid "$crt" && [ -s "$key" ] && openssl verify -CAfile "$DIR/ca.crt" "$crt" >/dev/null 2>&1; then
    continue
  fi
  ext=$(mktemp)
  cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$(sans "$id")
EOF
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$key.tmp" -out "$DIR/$id.csr" -subj "/O=voice-platform/CN=$id" 2>/dev/null
  openssl x509 -req -sha256 -days "$DAYS" -in "$DIR/$id.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$ext" -out "$crt.tmp" 2>/dev/null
  rm -f "$ext" "$DIR/$id.csr"
  mv "$key.tmp" "$key"
  mv "$crt.tmp" "$crt"
  issued+=("$id")
done
if ((${#issued[@]})); then step "issued service certificates in $DIR: ${issued[*]}"; fi
