-- "The newest events" and dashboards over all devices: WHERE time >= $1
-- ORDER BY time DESC. Times arrive mostly in order, so entries land at the
-- right edge of the index: the cheapest kind of index to maintain.
CREATE INDEX telemetry_time ON telemetry (time DESC);
