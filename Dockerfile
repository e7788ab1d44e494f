# Container image of image-manager. Build: docker build -t image-manager .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
RUN cargo build --release --locked && strip target/release/image-manager

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/image-manager --create-home image-manager
COPY --from=build /src/target/release/image-manager /usr/local/bin/image-manager
COPY config/image-manager.toml /etc/image-manager/image-manager.toml
USER image-manager
WORKDIR /var/lib/image-manager
EXPOSE 5000
# Binding beyond loopback needs auth and TLS (or a TLS-terminating proxy and
# IMAGE_MANAGER_SERVER__ALLOW_PLAIN_HTTP=true): IMAGE_MANAGER_SERVER__LISTEN=0.0.0.0:5000 with
# IMAGE_MANAGER_SERVER__AUTH=token, IMAGE_MANAGER_SERVER__TLS_CERT/TLS_KEY, after `image-manager user add NAME --admin --password-stdin`.
ENTRYPOINT ["image-manager"]
CMD ["serve", "--config", "/etc/image-manager/image-manager.toml", "--data-dir", "/var/lib/image-manager/data"]
