-- Upload sessions are written by one request at a time: `writer` holds the token of the request
-- that holds the session's lease until `writer_until` (ms since the epoch; renewed while the body
-- streams). `hash_state` is the serialized running hash of the acknowledged bytes, so that any
-- replica continues a session without reading it back. `data_id` names the upload data in the
-- blob store when it is not the session id (a request that takes over an expired lease copies
-- the acknowledged bytes to fresh data, so the stalled writer can no longer touch them).
ALTER TABLE uploads
    ADD COLUMN writer VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN writer_until BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN hash_state VARCHAR(1024) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN data_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD KEY uploads_data (data_id);
