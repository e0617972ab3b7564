# syntax=docker/dockerfile:1
# wsgate container image: build with `docker build -t wsgate:0.1.0 .` from the
# repository root (see charts/wsgate/README.md for kind and registries).
#
# Stage 1 compiles the release binary against the locked dependency set and
# strips it (the image is pulled on every scale-out; the symbols are kept in
# wsgate.debug: `docker build --target debug -o type=local,dest=. .`). The final
# stage is distroless (glibc, libgcc, CA certificates, no shell, no package
# manager) running as the unprivileged user nonroot (65532).
# CI builds the same runtime contract without Docker: hack/image/build.sh reads
# USER, EXPOSE, ENTRYPOINT and CMD from the last stage of this file.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not refetch them (layer cache).
# (Stub targets: Cargo needs the `wsgate` binary target to read the manifest.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' >src/main.rs && touch src/lib.rs \
 && cargo fetch --locked \
 && rm -r src
COPY src ./src
COPY crds ./crds
# The target directory is a BuildKit cache: incremental rebuilds, small layers.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin wsgate \
 && objcopy --only-keep-debug target/release/wsgate /wsgate.debug \
 && objcopy --strip-all --add-gnu-debuglink=/wsgate.debug target/release/wsgate /wsgate

# `--target debug` exports only the symbols (for perf/gdb next to the image's binary).
FROM scratch AS debug
COPY --from=build /wsgate.debug /wsgate.debug

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /wsgate /wsgate
USER 65532:65532
# 8080 ws:// and HTTP, 8443 wss:// and HTTPS, 9090 metrics (/metrics, /healthz, /readyz
# with --metrics-listen; the chart keeps the full admin listener on loopback).
EXPOSE 8080 8443 9090
ENTRYPOINT ["/wsgate"]
CMD ["--help"]
