-- 0008 (#17): the call history. Summary columns on a finished call, written in the statement that finishes it
-- (finish_call, record_finished) and when its analysis lands (finish_analysis, fail_analysis), never on admission:
--   outcome           the analysis's verdict on its success criteria: 'succeeded', 'failed', NULL (unknown)
--   model_usd         the call's cost without its transcription (the report's cost_usd - transcription_cost_usd)
--   transcription_usd the input transcription's cost (the report's transcription_cost_usd; 0 when absent)
--   analysis_usd      the post-call analysis's cost
--   analysis_summary  the analysis's short summary text
--   transcript_stripped_at  when retention removed the transcript (purge), NULL while it is kept
-- Ring-to-answer (accepted_at - received_at), handle time (ended_at - accepted_at) and transfers (ended_reason
-- 'transferred') come from columns the row has already.
-- Full text: call_search holds each finished call's transcript as a tsvector ('simple': words as written, lower
-- case, no stemming, as the SQLite backend's FTS5), with a GIN index; deleted with its call (cascade).

ALTER TABLE calls ADD COLUMN outcome text CHECK (outcome IN ('succeeded', 'failed'));
ALTER TABLE calls ADD COLUMN model_usd double precision;
ALTER TABLE calls ADD COLUMN transcription_usd double precision;
ALTER TABLE calls ADD COLUMN analysis_usd double precision;
ALTER TABLE calls ADD COLUMN analysis_summary text;
ALTER TABLE calls ADD COLUMN transcript_stripped_at double precision;

CREATE TABLE call_search (
    call_id text PRIMARY KEY REFERENCES calls (call_id) ON DELETE CASCADE,
    body    tsvector NOT NULL
);
CREATE INDEX call_search_body ON call_search USING gin (body);

CREATE INDEX calls_overview ON calls (ended_at) INCLUDE (ended_reason, outcome, received_at, accepted_at, model_usd,
    transcription_usd, analysis_usd) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_reason ON calls (ended_reason, ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_profile ON calls (profile, ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_outcome ON calls (outcome, ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_transcript_kept ON calls (ended_at) WHERE ended_at IS NOT NULL AND transcript_stripped_at IS NULL;

-- backfill the calls finished before this migration
UPDATE calls SET
    transcription_usd = coalesce((report ->> 'transcription_cost_usd')::double precision, 0),
    model_usd = coalesce((report ->> 'cost_usd')::double precision, cost_usd)
        - coalesce((report ->> 'transcription_cost_usd')::double precision, 0)
WHERE ended_at IS NOT NULL;

UPDATE calls SET
    outcome = CASE a.result -> 'success' WHEN 'true'::jsonb THEN 'succeeded' WHEN 'false'::jsonb THEN 'failed' END,
    analysis_usd = a.cost_usd,
    analysis_summary = left(a.result ->> 'summary', 500)
FROM call_analyses a
WHERE a.call_id = calls.call_id AND a.status <> 'pending' AND a.result IS NOT NULL;

INSERT INTO call_search (call_id, body)
SELECT c.call_id, to_tsvector('simple', coalesce(string_agg(t.value ->> 'text', E'\n' ORDER BY t.n), ''))
FROM calls c, jsonb_array_elements(CASE WHEN jsonb_typeof(c.report -> 'transcript') = 'array'
    THEN c.report -> 'transcript' ELSE '[]'::jsonb END) WITH ORDINALITY AS t(value, n)
WHERE c.ended_at IS NOT NULL AND jsonb_typeof(c.report -> 'transcript') = 'array'
GROUP BY c.call_id;
