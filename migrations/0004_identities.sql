-- Who may connect, and what each may do. A secret is never stored: only a
-- salted scrypt hash of it, and the secret's first characters, which are
-- its public lookup key (as an API key's prefix) for Bearer tokens.
CREATE TABLE identities (
  id            text        PRIMARY KEY
                CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  role          text        NOT NULL CHECK (role IN ('device', 'reader', 'admin')),
  secret_hash   text        NOT NULL,
  secret_lookup text        NOT NULL,
  enabled       boolean     NOT NULL DEFAULT true,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  last_seen_at  timestamptz
);

CREATE INDEX identities_secret_lookup ON identities (secret_lookup);

-- Extra rules on top of a role's, by topic filter with %u (the identity's
-- id) and %c (the client id). Deny rules are checked before allow rules.
CREATE TABLE identity_rules (
  id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  identity_id text        NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
  permission  text        NOT NULL CHECK (permission IN ('allow', 'deny')),
  action      text        NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
  pattern     text        NOT NULL CHECK (pattern <> '' AND pattern !~ '\x00'),
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX identity_rules_identity_id ON identity_rules (identity_id);

-- Every change to an identity or its rules, from any client (the devices
-- command, psql, another service process), is announced on this channel
-- with the identity's id, after COMMIT: services drop their cached
-- credentials and disconnect its open connections. last_seen_at alone is
-- not a change.
CREATE FUNCTION identities_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'identities' THEN
    IF TG_OP = 'UPDATE'
       AND (OLD.role, OLD.secret_hash, OLD.enabled) IS NOT DISTINCT FROM (NEW.role, NEW.secret_hash, NEW.enabled)
       AND OLD.id = NEW.id THEN
      RETURN NULL;
    END IF;
    PERFORM pg_notify('telemetry_bridge_identities', COALESCE(OLD.id, NEW.id));
  ELSE
    PERFORM pg_notify('telemetry_bridge_identities', COALESCE(OLD.identity_id, NEW.identity_id));
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER identities_changed AFTER INSERT OR UPDATE OR DELETE ON identities
  FOR EACH ROW EXECUTE FUNCTION identities_notify();
CREATE TRIGGER identity_rules_changed AFTER INSERT OR UPDATE OR DELETE ON identity_rules
  FOR EACH ROW EXECUTE FUNCTION identities_notify();
