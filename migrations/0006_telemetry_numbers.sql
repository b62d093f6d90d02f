-- The numbers a payload holds, at any depth of objects, named by their path:
-- {"temperature":21.5,"ENERGY":{"Power":45}} gives temperature 21.5 and
-- ENERGY.Power 45. Dashboards chart whatever fields a device sends with it.
-- Times and sequence numbers (ts, tst, timestamp, seq) are left out: they
-- are not readings. Arrays are not entered.
CREATE FUNCTION telemetry_numbers(payload jsonb)
RETURNS TABLE (field text, value numeric)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  WITH RECURSIVE member(path, key, value) AS (
    SELECT key, key, value FROM jsonb_each(CASE WHEN jsonb_typeof(payload) = 'object' THEN payload END)
    UNION ALL
    SELECT member.path || '.' || inner_member.key, inner_member.key, inner_member.value
      FROM member,
           jsonb_each(CASE WHEN jsonb_typeof(member.value) = 'object' THEN member.value END)
             AS inner_member
  )
  SELECT path, value::numeric
    FROM member
   WHERE jsonb_typeof(value) = 'number'
     AND key NOT IN ('ts', 'tst', 'timestamp', 'seq')
$$;
