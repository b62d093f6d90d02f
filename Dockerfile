# Build: every dependency, the compiler among them, turns the sources into dist/.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY bin bin
COPY bridge bridge
COPY broker broker
COPY device-sim device-sim
COPY http http
COPY storage storage
RUN npm run build

# Run: the production dependencies, the compiled service, its migrations and
# the example mappings (MAPPINGS_FILE=mappings/tasmota.yaml).
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist dist
COPY migrations migrations
COPY mappings mappings
# DATA_DIR (.data: the embedded PostgreSQL, when DATABASE_URL is unset)
# belongs to the user the service runs as; a volume mounted on it starts
# out owned by that user too.
RUN mkdir .data && chown node:node .data
USER node
# A container's loopback is its own: listen on its interfaces, which makes
# credentials required (ALLOW_ANONYMOUS=true opens it deliberately).
ENV MQTT_HOST=0.0.0.0 MQTT_PORT=1883 HTTP_HOST=0.0.0.0 HTTP_PORT=8080
EXPOSE 1883 8080
# /health answers 200 while the MQTT listener is open and PostgreSQL answers.
# The slim image has no curl; node has fetch.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + process.env.HTTP_PORT + '/health').then((response) => process.exit(response.ok ? 0 : 1), () => process.exit(1))"]
# node itself is PID 1 and gets the SIGTERM of `docker stop`: the service
# commits what it received, acknowledges it and exits.
CMD ["node", "dist/bin/start.js"]
