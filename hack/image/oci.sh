#!/usr/bin/env bash
# oci.sh ROOTFS CONFIG_JSON NAME:TAG OUT.tar
#
# Packs ROOTFS as a one-layer OCI image archive (oci-layout, index.json,
# blobs/sha256/...) that `ctr images import`, `podman load` and `skopeo copy
# oci-archive:` read. CONFIG_JSON is the image config's "config" object
# (User, Entrypoint, Cmd, ExposedPorts, Env, WorkingDir).
#
# The layer is an uncompressed tar, so its digest is also its diff_id, and it
# is reproducible: sorted names, mtime 0, numeric owners as they are in ROOTFS.
set -euo pipefail
[[ $# -eq 4 ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
rootfs="$1" config="$2" ref="$3" out="$4"
name="${ref%:*}" tag="${ref##*:}"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/blobs/sha256"

blob() { # FILE -> moves it into blobs/, prints "digest size"
  local d s
  d="$(sha256sum "$1" | cut -c1-64)"
  s="$(stat -c %s "$1")"
  mv "$1" "${work}/blobs/sha256/${d}"
  echo "${d} ${s}"
}

tar --sort=name --mtime=@0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "${rootfs}" -cf "${work}/layer" .
read -r layer_digest layer_size < <(blob "${work}/layer")

jq -n --argjson c "$(cat "${config}")" --arg diff "sha256:${layer_digest}" '{
  architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
  config: $c, rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created: "1970-01-01T00:00:00Z", created_by: "hack/image/build.sh"}]
}' >"${work}/config"
read -r config_digest config_size < <(blob "${work}/config")

jq -n --arg cd "sha256:${config_digest}" --argjson cs "${config_size}" \
  --arg ld "sha256:${layer_digest}" --argjson ls "${layer_size}" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]
}' >"${work}/manifest"
read -r manifest_digest manifest_size < <(blob "${work}/manifest")

jq -n --arg md "sha256:${manifest_digest}" --argjson ms "${manifest_size}" \
  --arg name "${name}:${tag}" --arg tag "${tag}" '{
  schemaVersion: 2,
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
    annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}}]
}' >"${work}/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"${work}/oci-layout"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${work}" -cf "${out}.tmp" oci-layout index.json blobs
mv -f "${out}.tmp" "${out}"
echo "${out}: ${name}:${tag} manifest sha256:${manifest_digest}, layer ${layer_size} bytes" >&2
