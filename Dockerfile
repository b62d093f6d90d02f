FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY . .
# A container's loopback is its own: listen on its interfaces, which makes
# credentials required (ALLOW_ANONYMOUS=true opens it deliberately).
ENV MQTT_HOST=0.0.0.0 MQTT_PORT=1883 HTTP_HOST=0.0.0.0 HTTP_PORT=8080
EXPOSE 1883 8080
CMD ["npx", "tsx", "bin/start.ts"]
