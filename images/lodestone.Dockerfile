# The `lodestone` store image. Build from the repository root:
#   docker build -f images/lodestone.Dockerfile -t lodestone:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libclang-dev g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lodestone --bin lodestone \
    && install -D target/release/lodestone /out/lodestone

# Runtime: glibc and libstdc++ (RocksDB is C++), no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/lodestone /usr/local/bin/lodestone
USER 65532:65532
EXPOSE 2379 2380 2381
ENTRYPOINT ["/usr/local/bin/lodestone"]
