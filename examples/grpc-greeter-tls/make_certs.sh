#!/usr/bin/env bash
# Makes the certificates of the TLS Greeter example with openssl:
#
#   ca.crt / ca.key              a private CA ("nuncio example CA") that signs the two below
#   server.crt / server.key      nuncio's certificate (termination): localhost, 127.0.0.1
#   upstream.crt / upstream.key  greeter_server_tls.py's certificate (origination): localhost, 127.0.0.1
#   greeter-tls-secret.yaml      server.crt + server.key as the Kubernetes Secret greeter-tls
#                                (type kubernetes.io/tls, base64 data), which the Host names
#
# Usage: make_certs.sh [OUTDIR]   (default: certs/ next to this script; gitignored)
# Keys are EC P-256, signatures ECDSA-SHA256: what mbedTLS (nuncio) and grpcio both take.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE/certs}"
DAYS=365
mkdir -p "$OUT"
cd "$OUT"

command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }

# X.509 v3 extensions: a CA, and a TLS server certificate for localhost.
cat > ca.ext <<'EXT'
[v3]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EXT
cat > server.ext <<'EXT'
[v3]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT

# 1. The CA: a key and a self-signed certificate.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -sha256 -key ca.key -subj "/CN=nuncio example CA" -days "$DAYS" \
    -config ca.ext -extensions v3 -out ca.crt

# 2. Two server certificates signed by the CA: a key, a request, the signature.
for name in server upstream; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
    openssl req -new -sha256 -key "$name.key" -subj "/CN=localhost" -out "$name.csr"
    openssl x509 -req -sha256 -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
        -days "$DAYS" -extfile server.ext -extensions v3 -out "$name.crt"
    rm -f "$name.csr"
done
rm -f ca.ext server.ext

# 3. nuncio's certificate as a Kubernetes TLS Secret (what
#    `kubectl create secret tls greeter-tls --cert=server.crt --key=server.key` makes).
cat > greeter-tls-secret.yaml <<YAML
# Made by make_certs.sh: server.crt and server.key, base64.
apiVersion: v1
kind: Secret
metadata:
  name: greeter-tls
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 server.crt)
  tls.key: $(base64 -w0 server.key)
YAML

openssl verify -CAfile ca.crt server.crt upstream.crt
echo "make_certs.sh: certificates in $OUT"
