# Multi-stage build of the manymodel binary; librdkafka is compiled from source by rdkafka,
# with OpenSSL (TLS, SASL SCRAM/OAUTHBEARER; libssl-dev is in the rust image) and zstd.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The `dist` profile (Cargo.toml): the release build, optimised across crates.
RUN cargo build --profile dist --locked --bin manymodel

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown 10001 /data
COPY --from=build /src/target/dist/manymodel /usr/local/bin/manymodel
COPY config/compose.toml /etc/manymodel/serve.toml
USER 10001
EXPOSE 9898
ENTRYPOINT ["manymodel"]
