#!/usr/bin/env bash
# image.sh OUT.tar — the e2e-node chat back end (server.js) as a one-layer OCI
# image, localhost/wsgate-chat:e2e: this host's `node`, the glibc and libstdc++
# files it links (as `ldd` names them), socket.io from the test peers'
# node_modules (tests/setup.sh installs them), running as 65532. Rebuilt only
# when one of its inputs changed. Prints OUT.tar.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../../.." && pwd)"
out="$1"
modules="${WSGATE_CACHE:-/var/cache/wsgate}/peers-node/node_modules"
node="$(readlink -f "$(command -v node)")"
[[ -d "${modules}/socket.io" ]] || { echo "image.sh: ${modules}/socket.io missing; run tests/setup.sh" >&2; exit 1; }
key="$( (sha256sum "${node}" "${HERE}/server.js" "${HERE}/image.sh" "${ROOT}/hack/image/oci.sh"; cat "${modules}/.package-lock.json" 2>/dev/null) | sha256sum | cut -c1-16)"
if [[ -s "${out}" && "$(cat "${out}.key" 2>/dev/null)" == "${key}" ]]; then echo "${out}"; exit 0; fi
root="$(mktemp -d)"
trap 'rm -rf "${root}" "${root}.json"' EXIT
chmod 0755 "${root}"
install -d -m 0755 "${root}"/{etc,usr/local/bin,app}
install -d -m 1777 "${root}/tmp"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/app:/sbin/nologin' >"${root}/etc/passwd"
cp "${node}" "${root}/usr/local/bin/node"
ldd "${node}" | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
  install -D -m 0755 "$(readlink -f "${lib}")" "${root}${lib}"
done
cp "${HERE}/server.js" "${root}/app/server.js"
cp -r "${modules}" "${root}/app/node_modules"
jq -n '{User: "65532:65532", Entrypoint: ["/usr/local/bin/node", "/app/server.js"], WorkingDir: "/app",
  ExposedPorts: {"3000/tcp": {}}, Env: ["PATH=/usr/local/bin:/usr/bin:/bin"]}' >"${root}.json"
"${ROOT}/hack/image/oci.sh" "${root}" "${root}.json" localhost/wsgate-chat:e2e "${out}.new"
mv "${out}.new" "${out}"
echo "${key}" >"${out}.key"
echo "${out}"
