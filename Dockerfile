# fedid's container image: one statically linked binary on distroless/static, running as
# non-root. Build and push:
#   docker build -t ghcr.io/fedid-dev/fedid:0.1.0 .
#   docker push ghcr.io/fedid-dev/fedid:0.1.0
# CI has no Docker engine: it lints this file with hadolint and runs the build command between
# the markers below itself (e2e/test_image.py), then runs the binary it produced.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core ./core
COPY operator ./operator
# A fully static binary (glibc, crt-static): nothing from the build image is needed at run time.
# In a cluster fedid reaches the apiserver by the IP in KUBERNETES_SERVICE_HOST, so it needs no
# resolver libraries either.
# build-command-begin
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu -p fedid
# build-command-end

# distroless/static: CA certificates, /etc/passwd with the nonroot user, no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fedid" \
      org.opencontainers.image.description="Kubernetes operator that makes the cluster an OIDC issuer for CI workloads" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fedid-dev/fedid" \
      org.opencontainers.image.vendor="fedid"
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/fedid /fedid
USER 65532:65532
ENTRYPOINT ["/fedid"]
CMD ["run"]
