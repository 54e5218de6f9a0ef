-- eventwire store, SQLite dialect: where a dead letter that could not be decoded came from
-- (ew_dead_letter.transport), such as "kafka topic=ew.user.registered partition=0 offset=42";
-- NULL for a handler's failure and for rows written before this migration.
ALTER TABLE event_store.dead_letter_queue ADD COLUMN transport TEXT;
