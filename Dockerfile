# A static `maestro` binary in an empty image.
#
#   docker build -t maestro .
#   docker run -p 8080:8080 -e MAESTRO_BIND=0.0.0.0:8080 \
#     -e MAESTRO_JWT_JWKS_URL=https://id.example.com/.well-known/jwks.json maestro
#
# The binary links no C library (rustls, no OpenSSL), so musl makes it
# fully static.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p app --bin maestro

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/maestro /maestro
# CA roots are compiled in (webpki-roots), so the image needs no certificates.
USER 65534:65534
EXPOSE 8080
ENV MAESTRO_BIND=0.0.0.0:8080 MAESTRO_LOG_FORMAT=json
ENTRYPOINT ["/maestro", "serve"]
