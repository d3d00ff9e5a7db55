-- Monitoring rollups for the queries the full-dimension tables answered
-- slowly (issue 18), written in the same transaction as the events like every
-- rollup (crates/store/src/rollups.rs), same columns and histogram as 0006:
-- - usage_rollup_api_minute: a namespace's calls by API and status class per
--   minute (the other dimensions ''), for unfiltered minute series (the last
--   hour by minute read every dimension's minute rows).
-- - usage_rollup_caller_hour / _day: a namespace's calls by key, client id and
--   status class (API, model, endpoint and request type ''), for breakdowns by
--   key or client id and series filtered by them at hour and day grain.
-- Each is filled from the full-dimension table of its grain, so an upgraded
-- database answers as a fresh one would.

CREATE TABLE usage_rollup_api_minute (
    namespace_id   TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment    TEXT NOT NULL,
    bucket         BIGINT NOT NULL,
    api            TEXT NOT NULL,
    model          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    request_type   TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    subcloud       TEXT NOT NULL,
    calls          BIGINT NOT NULL,
    errors         BIGINT NOT NULL,
    cost_micros    BIGINT NOT NULL,
    tokens_in      BIGINT NOT NULL,
    tokens_out     BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    h16 BIGINT NOT NULL DEFAULT 0,
    h17 BIGINT NOT NULL DEFAULT 0,
    h18 BIGINT NOT NULL DEFAULT 0,
    h19 BIGINT NOT NULL DEFAULT 0,
    h20 BIGINT NOT NULL DEFAULT 0,
    h21 BIGINT NOT NULL DEFAULT 0,
    h22 BIGINT NOT NULL DEFAULT 0,
    h23 BIGINT NOT NULL DEFAULT 0,
    h24 BIGINT NOT NULL DEFAULT 0,
    h25 BIGINT NOT NULL DEFAULT 0,
    h26 BIGINT NOT NULL DEFAULT 0,
    h27 BIGINT NOT NULL DEFAULT 0,
    h28 BIGINT NOT NULL DEFAULT 0,
    h29 BIGINT NOT NULL DEFAULT 0,
    h30 BIGINT NOT NULL DEFAULT 0,
    h31 BIGINT NOT NULL DEFAULT 0,
    h32 BIGINT NOT NULL DEFAULT 0,
    h33 BIGINT NOT NULL DEFAULT 0,
    h34 BIGINT NOT NULL DEFAULT 0,
    h35 BIGINT NOT NULL DEFAULT 0,
    h36 BIGINT NOT NULL DEFAULT 0,
    h37 BIGINT NOT NULL DEFAULT 0,
    h38 BIGINT NOT NULL DEFAULT 0,
    h39 BIGINT NOT NULL DEFAULT 0,
    h40 BIGINT NOT NULL DEFAULT 0,
    h41 BIGINT NOT NULL DEFAULT 0,
    h42 BIGINT NOT NULL DEFAULT 0,
    h43 BIGINT NOT NULL DEFAULT 0,
    h44 BIGINT NOT NULL DEFAULT 0,
    h45 BIGINT NOT NULL DEFAULT 0,
    h46 BIGINT NOT NULL DEFAULT 0,
    h47 BIGINT NOT NULL DEFAULT 0,
    h48 BIGINT NOT NULL DEFAULT 0,
    h49 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id,
                 status_class, client_id, subcloud)
);

CREATE TABLE usage_rollup_caller_hour (
    namespace_id   TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment    TEXT NOT NULL,
    bucket         BIGINT NOT NULL,
    api            TEXT NOT NULL,
    model          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    request_type   TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    subcloud       TEXT NOT NULL,
    calls          BIGINT NOT NULL,
    errors         BIGINT NOT NULL,
    cost_micros    BIGINT NOT NULL,
    tokens_in      BIGINT NOT NULL,
    tokens_out     BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    h16 BIGINT NOT NULL DEFAULT 0,
    h17 BIGINT NOT NULL DEFAULT 0,
    h18 BIGINT NOT NULL DEFAULT 0,
    h19 BIGINT NOT NULL DEFAULT 0,
    h20 BIGINT NOT NULL DEFAULT 0,
    h21 BIGINT NOT NULL DEFAULT 0,
    h22 BIGINT NOT NULL DEFAULT 0,
    h23 BIGINT NOT NULL DEFAULT 0,
    h24 BIGINT NOT NULL DEFAULT 0,
    h25 BIGINT NOT NULL DEFAULT 0,
    h26 BIGINT NOT NULL DEFAULT 0,
    h27 BIGINT NOT NULL DEFAULT 0,
    h28 BIGINT NOT NULL DEFAULT 0,
    h29 BIGINT NOT NULL DEFAULT 0,
    h30 BIGINT NOT NULL DEFAULT 0,
    h31 BIGINT NOT NULL DEFAULT 0,
    h32 BIGINT NOT NULL DEFAULT 0,
    h33 BIGINT NOT NULL DEFAULT 0,
    h34 BIGINT NOT NULL DEFAULT 0,
    h35 BIGINT NOT NULL DEFAULT 0,
    h36 BIGINT NOT NULL DEFAULT 0,
    h37 BIGINT NOT NULL DEFAULT 0,
    h38 BIGINT NOT NULL DEFAULT 0,
    h39 BIGINT NOT NULL DEFAULT 0,
    h40 BIGINT NOT NULL DEFAULT 0,
    h41 BIGINT NOT NULL DEFAULT 0,
    h42 BIGINT NOT NULL DEFAULT 0,
    h43 BIGINT NOT NULL DEFAULT 0,
    h44 BIGINT NOT NULL DEFAULT 0,
    h45 BIGINT NOT NULL DEFAULT 0,
    h46 BIGINT NOT NULL DEFAULT 0,
    h47 BIGINT NOT NULL DEFAULT 0,
    h48 BIGINT NOT NULL DEFAULT 0,
    h49 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id,
                 status_class, client_id, subcloud)
);

CREATE TABLE usage_rollup_caller_day (
    namespace_id   TEXT NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
    environment    TEXT NOT NULL,
    bucket         BIGINT NOT NULL,
    api            TEXT NOT NULL,
    model          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    request_type   TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    subcloud       TEXT NOT NULL,
    calls          BIGINT NOT NULL,
    errors         BIGINT NOT NULL,
    cost_micros    BIGINT NOT NULL,
    tokens_in      BIGINT NOT NULL,
    tokens_out     BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    h00 BIGINT NOT NULL DEFAULT 0,
    h01 BIGINT NOT NULL DEFAULT 0,
    h02 BIGINT NOT NULL DEFAULT 0,
    h03 BIGINT NOT NULL DEFAULT 0,
    h04 BIGINT NOT NULL DEFAULT 0,
    h05 BIGINT NOT NULL DEFAULT 0,
    h06 BIGINT NOT NULL DEFAULT 0,
    h07 BIGINT NOT NULL DEFAULT 0,
    h08 BIGINT NOT NULL DEFAULT 0,
    h09 BIGINT NOT NULL DEFAULT 0,
    h10 BIGINT NOT NULL DEFAULT 0,
    h11 BIGINT NOT NULL DEFAULT 0,
    h12 BIGINT NOT NULL DEFAULT 0,
    h13 BIGINT NOT NULL DEFAULT 0,
    h14 BIGINT NOT NULL DEFAULT 0,
    h15 BIGINT NOT NULL DEFAULT 0,
    h16 BIGINT NOT NULL DEFAULT 0,
    h17 BIGINT NOT NULL DEFAULT 0,
    h18 BIGINT NOT NULL DEFAULT 0,
    h19 BIGINT NOT NULL DEFAULT 0,
    h20 BIGINT NOT NULL DEFAULT 0,
    h21 BIGINT NOT NULL DEFAULT 0,
    h22 BIGINT NOT NULL DEFAULT 0,
    h23 BIGINT NOT NULL DEFAULT 0,
    h24 BIGINT NOT NULL DEFAULT 0,
    h25 BIGINT NOT NULL DEFAULT 0,
    h26 BIGINT NOT NULL DEFAULT 0,
    h27 BIGINT NOT NULL DEFAULT 0,
    h28 BIGINT NOT NULL DEFAULT 0,
    h29 BIGINT NOT NULL DEFAULT 0,
    h30 BIGINT NOT NULL DEFAULT 0,
    h31 BIGINT NOT NULL DEFAULT 0,
    h32 BIGINT NOT NULL DEFAULT 0,
    h33 BIGINT NOT NULL DEFAULT 0,
    h34 BIGINT NOT NULL DEFAULT 0,
    h35 BIGINT NOT NULL DEFAULT 0,
    h36 BIGINT NOT NULL DEFAULT 0,
    h37 BIGINT NOT NULL DEFAULT 0,
    h38 BIGINT NOT NULL DEFAULT 0,
    h39 BIGINT NOT NULL DEFAULT 0,
    h40 BIGINT NOT NULL DEFAULT 0,
    h41 BIGINT NOT NULL DEFAULT 0,
    h42 BIGINT NOT NULL DEFAULT 0,
    h43 BIGINT NOT NULL DEFAULT 0,
    h44 BIGINT NOT NULL DEFAULT 0,
    h45 BIGINT NOT NULL DEFAULT 0,
    h46 BIGINT NOT NULL DEFAULT 0,
    h47 BIGINT NOT NULL DEFAULT 0,
    h48 BIGINT NOT NULL DEFAULT 0,
    h49 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id,
                 status_class, client_id, subcloud)
);

INSERT INTO usage_rollup_api_minute (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id, status_class, client_id, subcloud, calls, errors, cost_micros, tokens_in, tokens_out, latency_sum_us, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14, h15, h16, h17, h18, h19, h20, h21, h22, h23, h24, h25, h26, h27, h28, h29, h30, h31, h32, h33, h34, h35, h36, h37, h38, h39, h40, h41, h42, h43, h44, h45, h46, h47, h48, h49)
SELECT namespace_id, environment, bucket, api, '', '', '', '', status_class, '', '',
    SUM(calls), SUM(errors), SUM(cost_micros), SUM(tokens_in), SUM(tokens_out), SUM(latency_sum_us), SUM(h00), SUM(h01), SUM(h02), SUM(h03), SUM(h04), SUM(h05), SUM(h06), SUM(h07), SUM(h08), SUM(h09), SUM(h10), SUM(h11), SUM(h12), SUM(h13), SUM(h14), SUM(h15), SUM(h16), SUM(h17), SUM(h18), SUM(h19), SUM(h20), SUM(h21), SUM(h22), SUM(h23), SUM(h24), SUM(h25), SUM(h26), SUM(h27), SUM(h28), SUM(h29), SUM(h30), SUM(h31), SUM(h32), SUM(h33), SUM(h34), SUM(h35), SUM(h36), SUM(h37), SUM(h38), SUM(h39), SUM(h40), SUM(h41), SUM(h42), SUM(h43), SUM(h44), SUM(h45), SUM(h46), SUM(h47), SUM(h48), SUM(h49)
FROM usage_rollup_minute
GROUP BY namespace_id, environment, bucket, api, status_class;

INSERT INTO usage_rollup_caller_hour (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id, status_class, client_id, subcloud, calls, errors, cost_micros, tokens_in, tokens_out, latency_sum_us, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14, h15, h16, h17, h18, h19, h20, h21, h22, h23, h24, h25, h26, h27, h28, h29, h30, h31, h32, h33, h34, h35, h36, h37, h38, h39, h40, h41, h42, h43, h44, h45, h46, h47, h48, h49)
SELECT namespace_id, environment, bucket, '', '', '', '', key_id, status_class, client_id, '',
    SUM(calls), SUM(errors), SUM(cost_micros), SUM(tokens_in), SUM(tokens_out), SUM(latency_sum_us), SUM(h00), SUM(h01), SUM(h02), SUM(h03), SUM(h04), SUM(h05), SUM(h06), SUM(h07), SUM(h08), SUM(h09), SUM(h10), SUM(h11), SUM(h12), SUM(h13), SUM(h14), SUM(h15), SUM(h16), SUM(h17), SUM(h18), SUM(h19), SUM(h20), SUM(h21), SUM(h22), SUM(h23), SUM(h24), SUM(h25), SUM(h26), SUM(h27), SUM(h28), SUM(h29), SUM(h30), SUM(h31), SUM(h32), SUM(h33), SUM(h34), SUM(h35), SUM(h36), SUM(h37), SUM(h38), SUM(h39), SUM(h40), SUM(h41), SUM(h42), SUM(h43), SUM(h44), SUM(h45), SUM(h46), SUM(h47), SUM(h48), SUM(h49)
FROM usage_rollup_hour
GROUP BY namespace_id, environment, bucket, key_id, status_class, client_id;

INSERT INTO usage_rollup_caller_day (namespace_id, environment, bucket, api, model, endpoint, request_type, key_id, status_class, client_id, subcloud, calls, errors, cost_micros, tokens_in, tokens_out, latency_sum_us, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14, h15, h16, h17, h18, h19, h20, h21, h22, h23, h24, h25, h26, h27, h28, h29, h30, h31, h32, h33, h34, h35, h36, h37, h38, h39, h40, h41, h42, h43, h44, h45, h46, h47, h48, h49)
SELECT namespace_id, environment, bucket, '', '', '', '', key_id, status_class, client_id, '',
    SUM(calls), SUM(errors), SUM(cost_micros), SUM(tokens_in), SUM(tokens_out), SUM(latency_sum_us), SUM(h00), SUM(h01), SUM(h02), SUM(h03), SUM(h04), SUM(h05), SUM(h06), SUM(h07), SUM(h08), SUM(h09), SUM(h10), SUM(h11), SUM(h12), SUM(h13), SUM(h14), SUM(h15), SUM(h16), SUM(h17), SUM(h18), SUM(h19), SUM(h20), SUM(h21), SUM(h22), SUM(h23), SUM(h24), SUM(h25), SUM(h26), SUM(h27), SUM(h28), SUM(h29), SUM(h30), SUM(h31), SUM(h32), SUM(h33), SUM(h34), SUM(h35), SUM(h36), SUM(h37), SUM(h38), SUM(h39), SUM(h40), SUM(h41), SUM(h42), SUM(h43), SUM(h44), SUM(h45), SUM(h46), SUM(h47), SUM(h48), SUM(h49)
FROM usage_rollup_day
GROUP BY namespace_id, environment, bucket, key_id, status_class, client_id;


-- Request log search (M4) is a case-insensitive substring of five columns,
-- `LOWER(column) LIKE '%term%'`, read newest first through the
-- (namespace_id, environment, time) index until a page is found. Without
-- statistics on those expressions the planner guesses a tiny selectivity for
-- a common term and picks a parallel scan whose worker start-up dominates;
-- these give it the values' real frequencies (built by ANALYZE, nothing on the
-- write path). A trigram GIN index (pg_trgm) on the five expressions was
-- measured too: it found rare terms without reading the namespace, but it
-- doubled the cost of inserting usage rows, which the gateway's writer pays
-- for every call.
CREATE STATISTICS usage_events_search_endpoint ON (LOWER(endpoint)) FROM usage_events;
CREATE STATISTICS usage_events_search_api ON (LOWER(api)) FROM usage_events;
CREATE STATISTICS usage_events_search_model ON (LOWER(model)) FROM usage_events;
CREATE STATISTICS usage_events_search_error ON (LOWER(error)) FROM usage_events;
CREATE STATISTICS usage_events_search_client ON (LOWER(client_id)) FROM usage_events;
ANALYZE usage_events;
