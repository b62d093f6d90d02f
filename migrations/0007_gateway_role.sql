-- A gateway publishes for the devices behind it (a Zigbee2MQTT bridge, a
-- Sparkplug edge node, an OwnTracks user's phones), where its rules allow.
ALTER TABLE identities DROP CONSTRAINT identities_role_check;
ALTER TABLE identities
  ADD CONSTRAINT identities_role_check CHECK (role IN ('device', 'gateway', 'reader', 'admin'));
