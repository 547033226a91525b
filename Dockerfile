# Multi-stage build: compile with the full Rust toolchain, ship only the binary on a slim
# base, as a non-root user. `docker build -t redis-xds:latest .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc: the crate that checks Envoy's validation rules compiles validate.proto.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
# jemalloc's compiled-in options (background purging, decay) come from here.
COPY .cargo ./.cargo
COPY src ./src
COPY crds ./crds
RUN cargo build --release --locked --bin redis-xds

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 redis-xds \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin redis-xds
COPY --from=build /src/target/release/redis-xds /usr/local/bin/redis-xds
USER 65532:65532
EXPOSE 18000 18001
ENTRYPOINT ["/usr/local/bin/redis-xds"]
CMD ["serve"]
