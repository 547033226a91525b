# Multi-stage build: compile with the full Rust toolchain, ship only the binary on a slim
# base, as a non-root user.
#
#   docker build -t redis-xds:latest .
#
# A binary built outside (CI, or the test suite's own build, as Istio and Linkerd build
# their images) goes into the same runtime stage without a Rust toolchain: put it at
# target/release/redis-xds in a build context of its own and pick the `prebuilt` stage:
#
#   docker build --target prebuilt -f Dockerfile -t redis-xds:latest CONTEXT
#
# docs/operations.md ("Building the image") has both, and how to push it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc and the well-known types it imports (google/protobuf/descriptor.proto, in
# libprotobuf-dev, which --no-install-recommends leaves out): the crate that checks Envoy's
# validation rules compiles validate.proto in its build script.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
# jemalloc's compiled-in options (background purging, decay) come from here.
COPY .cargo ./.cargo
COPY src ./src
COPY crds ./crds
# Cargo reads every target Cargo.toml declares, the benchmark's too, even for --bin.
COPY benches ./benches
RUN cargo build --release --locked --bin redis-xds

# What both ways to the image share: Debian, CA certificates, the non-root user.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 redis-xds \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin redis-xds
USER 65532:65532
EXPOSE 18000 18001
ENTRYPOINT ["/usr/local/bin/redis-xds"]
CMD ["serve"]

# `--target prebuilt`: the binary from the build context, built elsewhere.
FROM runtime AS prebuilt
COPY target/release/redis-xds /usr/local/bin/redis-xds

# The default (last) stage: the binary from the build stage above.
FROM runtime AS release
COPY --from=build /src/target/release/redis-xds /usr/local/bin/redis-xds
