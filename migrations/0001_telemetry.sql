-- Telemetry, one partition per UTC day on `time`. Partitions are created by
-- the service (ahead of time and on demand), never by a DEFAULT partition:
-- rows in a DEFAULT partition would block creating the day they belong to.
CREATE TABLE telemetry (
  time        timestamptz NOT NULL,
  topic       text        NOT NULL,
  device_id   text        NOT NULL,
  event_id    text        NOT NULL,
  payload     jsonb       NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (time);

-- A redelivered message (same topic, event_id and ts) can never be stored
-- twice. PostgreSQL requires the partition key in a unique index; putting it
-- second also serves "a topic over a time range".
CREATE UNIQUE INDEX telemetry_topic_time_event_id ON telemetry (topic, time, event_id);

-- "A device's latest readings": WHERE device_id = $1 ORDER BY time DESC LIMIT n.
CREATE INDEX telemetry_device_id_time ON telemetry (device_id, time DESC);

-- Dead letters: what could not be stored as telemetry, with the reason.
CREATE TABLE telemetry_rejected (
  id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT now(),
  client_id   text,
  topic       text        NOT NULL,
  reason      text        NOT NULL,
  detail      text,
  payload     bytea       NOT NULL
);

CREATE INDEX telemetry_rejected_received_at ON telemetry_rejected (received_at);
