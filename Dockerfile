# sitegrid: multi-stage build of the node (`sitegrid`) and the operator CLI
# (`sitegridctl`) into a slim image. Build: docker build -t sitegrid .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sitegrid-server --bin sitegrid \
 && cargo build --release --locked -p sitegrid-client --bin sitegridctl

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/sitegrid --shell /usr/sbin/nologin sitegrid \
 && mkdir -p /var/lib/sitegrid /etc/sitegrid \
 && chown sitegrid:sitegrid /var/lib/sitegrid
COPY --from=build /src/target/release/sitegrid /src/target/release/sitegridctl /usr/local/bin/
USER sitegrid
WORKDIR /var/lib/sitegrid
VOLUME ["/var/lib/sitegrid"]
# gRPC (clients, members, peer sites), HTTP (/metrics /health /ready), gossip (UDP).
EXPOSE 11222 9464 7946/udp
ENV SITEGRID_DATA_DIR=/var/lib/sitegrid
ENTRYPOINT ["sitegrid"]
CMD ["--config", "/etc/sitegrid/sitegrid.toml"]
