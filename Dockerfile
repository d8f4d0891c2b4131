# Poplar's image: an edge or a region, chosen by the config it is given.
#
#   docker build -t poplar:dev .
#   docker run --rm -p 8080:8080 poplar:dev          # the example tasks: curl localhost:8080/hello
#
# Stage 1 builds the binary and the example tasks with the same scripts the test suite runs;
# stage 2 is a small Debian with the binary, the tasks and the example configs, run as a user
# without privileges. docs/DEPLOY.md walks from here to a fleet on Kubernetes.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# What the build needs beyond Rust: cmake (pingora's zlib-ng) and the wasm32-wasip2 target.
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh
COPY . .
RUN scripts/build-tasks.sh
# The image's files, laid out under /out: the binary, the example tasks, the example configs
# (conf/, whose relative task paths hold there) and the image's own config.
RUN cargo build --release --locked --bin poplar \
 && install -D target/release/poplar /out/usr/local/bin/poplar \
 && install -d /out/usr/share/poplar/tasks/dist /out/usr/share/poplar/conf /out/etc/poplar \
 && cp tasks/dist/*.wasm /out/usr/share/poplar/tasks/dist/ \
 && cp -r conf/. /out/usr/share/poplar/conf/ \
 && cp deploy/docker/poplar.yaml /out/etc/poplar/poplar.yaml

FROM debian:bookworm-slim AS run
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/poplar --create-home poplar
COPY --from=build /out/ /
USER 10001:10001
WORKDIR /var/lib/poplar
# The proxy listener; the admin listener (/stats, /metrics, /reload, the deploy API).
EXPOSE 8080 9901
# Every Poplar server answers GET /_poplar/health on its proxy listener; bash's /dev/tcp
# asks it without a client in the image. POPLAR_HEALTH_PORT: the listener's port.
ENV POPLAR_HEALTH_PORT=8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${POPLAR_HEALTH_PORT} && printf 'GET /_poplar/health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM drains (README, Stopping); the orchestrator's grace period should exceed grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["poplar"]
CMD ["serve", "-c", "/etc/poplar/poplar.yaml"]
