#!/usr/bin/env bash
# Make a private CA and a TLS certificate for the SuperLink.
#
#   deploy/make-certificates.sh OUT_DIR [HOST_OR_IP ...]
#
# Writes OUT_DIR/ca.crt (give it to every SuperNode and to `flwr`; it is not a secret),
# OUT_DIR/server.pem and OUT_DIR/server.key (copy them to the SuperLink server) and
# OUT_DIR/ca.key, the CA's private key. Run this on your own machine, not on the server:
# whoever has ca.key can make a certificate that every SuperNode and `flwr` accept, i.e.
# pose as your SuperLink. Keep ca.key offline; it is only needed to make a new server
# certificate. The certificate is valid for every HOST_OR_IP given (default: localhost
# 127.0.0.1 ::1): use the name or address the SuperNodes dial, and add 127.0.0.1 if `flwr`
# reaches the SuperLink through an SSH tunnel.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [HOST_OR_IP ...]}
shift || true
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(localhost 127.0.0.1 ::1)
mkdir -p "$out"
san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}

openssl genrsa -out "$out/ca.key" 4096 2>/dev/null
openssl req -x509 -new -nodes -key "$out/ca.key" -sha256 -days 365 -subj "/CN=fedtrust-ca" -out "$out/ca.crt"
openssl genrsa -out "$out/server.key" 4096 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/CN=${hosts[0]}" -out "$out/server.csr"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/server.pem" -days 365 -sha256 -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key" "$out/server.key"
echo "wrote $out/ca.crt $out/server.pem $out/server.key (SAN: $san)"
echo "wrote $out/ca.key: keep it offline, never on the SuperLink server (it can sign a certificate" \
     "that every SuperNode and flwr trust); copy only server.pem and server.key to the server" >&2
