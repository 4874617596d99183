# syntax=docker/dockerfile:1

# Build a static binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sidecar ./cmd/sidecar

# Run it as an unprivileged user on a minimal image.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sidecar /usr/local/bin/sidecar
USER 65532:65532
EXPOSE 7070
ENV SIDECAR_ADDR=:7070
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/sidecar", "health", "http://127.0.0.1:7070"]
ENTRYPOINT ["/usr/local/bin/sidecar"]
CMD ["serve"]
