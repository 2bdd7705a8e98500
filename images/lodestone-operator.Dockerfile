# The `lodestone-operator` image. Build from the repository root:
#   docker build -f images/lodestone-operator.Dockerfile -t lodestone-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The operator never links RocksDB: building only its package keeps the image build short.
RUN cargo build --release --locked -p lodestone-operator --bin lodestone-operator \
    && install -D target/release/lodestone-operator /out/lodestone-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/lodestone-operator /usr/local/bin/lodestone-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lodestone-operator"]
CMD ["run"]
