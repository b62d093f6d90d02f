-- A dead letter keeps a prefix of the payload with the payload's full size
-- and SHA-256, and is recorded once per (reason, topic, payload): a device
-- resending a malformed message adds to `occurrences` instead of a row.
ALTER TABLE telemetry_rejected
  ADD COLUMN payload_bytes    integer,
  ADD COLUMN payload_sha256   bytea,
  ADD COLUMN occurrences      integer NOT NULL DEFAULT 1,
  ADD COLUMN last_received_at timestamptz;

UPDATE telemetry_rejected
   SET payload_bytes = length(payload),
       payload_sha256 = sha256(payload),
       last_received_at = received_at,
       payload = substring(payload FROM 1 FOR 4096);

-- Letters recorded more than once so far become one, counting them all.
WITH copies AS (
  SELECT min(id) AS kept, count(*) AS n, max(received_at) AS last
    FROM telemetry_rejected
   GROUP BY reason, topic, payload_sha256
  HAVING count(*) > 1
)
UPDATE telemetry_rejected r
   SET occurrences = copies.n, last_received_at = copies.last
  FROM copies
 WHERE r.id = copies.kept;

DELETE FROM telemetry_rejected r
 USING telemetry_rejected kept
 WHERE kept.reason = r.reason
   AND kept.topic = r.topic
   AND kept.payload_sha256 = r.payload_sha256
   AND kept.id < r.id;

ALTER TABLE telemetry_rejected
  ALTER COLUMN payload_bytes SET NOT NULL,
  ALTER COLUMN payload_sha256 SET NOT NULL,
  ALTER COLUMN last_received_at SET NOT NULL;

-- A topic may be up to 64 KiB, past a btree entry's limit: it is indexed by its digest.
CREATE UNIQUE INDEX telemetry_rejected_identity
  ON telemetry_rejected (reason, md5(topic), payload_sha256);
