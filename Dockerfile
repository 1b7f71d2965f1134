# cyncd in a container: built from this repository, run as an unprivileged user, state (the
# certificate, key and API token) in the /var/lib/cyncd volume. See docs/install.md.
#   docker build -t cyncd .
#   docker run -d --name cyncd -p 23779:23779 -p 127.0.0.1:8080:8080 -v cyncd:/var/lib/cyncd cyncd
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cyncd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cyncd --create-home cyncd
COPY --from=build /src/target/release/cyncd /usr/local/bin/cyncd
USER cyncd
VOLUME /var/lib/cyncd
# 23779: the devices (TLS). 8080: the web page, the API and /metrics.
EXPOSE 23779 8080
ENTRYPOINT ["cyncd"]
CMD ["serve", "--state-dir", "/var/lib/cyncd", "--http", "0.0.0.0:8080"]
