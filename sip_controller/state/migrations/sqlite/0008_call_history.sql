-- 0008 (#17): the call history. Summary columns on a finished call, written in the transaction that finishes it
-- (finish_call, record_finished) and when its analysis lands (finish_analysis, fail_analysis), never on admission:
--   outcome           the analysis's verdict on its success criteria: 'succeeded', 'failed', NULL (unknown)
--   model_usd         the call's cost without its transcription (the report's cost_usd - transcription_cost_usd)
--   transcription_usd the input transcription's cost (the report's transcription_cost_usd; 0 when absent)
--   analysis_usd      the post-call analysis's cost
--   analysis_summary  the analysis's short summary text
--   transcript_stripped_at  when retention removed the transcript (purge), NULL while it is kept
-- Ring-to-answer (accepted_at - received_at), handle time (ended_at - accepted_at) and transfers (ended_reason
-- 'transferred') come from columns the row has already.
-- Full text: call_search numbers each finished call that has transcript text (an INTEGER PRIMARY KEY, which VACUUM
-- keeps), and call_text (FTS5, unicode61 without folding diacritics, as PostgreSQL's 'simple' configuration) holds
-- the text under that number. Deleting a call deletes its call_search row (cascade), whose trigger deletes the text.

ALTER TABLE calls ADD COLUMN outcome TEXT CHECK (outcome IN ('succeeded', 'failed'));
ALTER TABLE calls ADD COLUMN model_usd REAL;
ALTER TABLE calls ADD COLUMN transcription_usd REAL;
ALTER TABLE calls ADD COLUMN analysis_usd REAL;
ALTER TABLE calls ADD COLUMN analysis_summary TEXT;
ALTER TABLE calls ADD COLUMN transcript_stripped_at REAL;

CREATE TABLE call_search (
    id      INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL UNIQUE REFERENCES calls (call_id) ON DELETE CASCADE
);
CREATE VIRTUAL TABLE call_text USING fts5 (body, tokenize = 'unicode61 remove_diacritics 0');
CREATE TRIGGER call_search_deleted AFTER DELETE ON call_search BEGIN
    DELETE FROM call_text WHERE rowid = old.id;
END;

-- the overview reads this index only (every column it aggregates is in it)
CREATE INDEX calls_overview ON calls (ended_at, ended_reason, outcome, received_at, accepted_at, model_usd,
    transcription_usd, analysis_usd) WHERE ended_at IS NOT NULL;
-- the list's filters, newest first
CREATE INDEX calls_history_by_reason ON calls (ended_reason, ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_profile ON calls (profile, ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_outcome ON calls (outcome, ended_at, call_id) WHERE ended_at IS NOT NULL;
-- retention: the oldest calls whose transcript is still kept
CREATE INDEX calls_transcript_kept ON calls (ended_at) WHERE ended_at IS NOT NULL AND transcript_stripped_at IS NULL;

-- backfill the calls finished before this migration
UPDATE calls SET
    transcription_usd = coalesce(json_extract(report, '$.transcription_cost_usd'), 0),
    model_usd = coalesce(json_extract(report, '$.cost_usd'), cost_usd)
        - coalesce(json_extract(report, '$.transcription_cost_usd'), 0)
WHERE ended_at IS NOT NULL;

UPDATE calls SET
    outcome = CASE json_type(a.result, '$.success') WHEN 'true' THEN 'succeeded' WHEN 'false' THEN 'failed' END,
    analysis_usd = a.cost_usd,
    analysis_summary = substr(json_extract(a.result, '$.summary'), 1, 500)
FROM call_analyses a
WHERE a.call_id = calls.call_id AND a.status <> 'pending' AND a.result IS NOT NULL AND json_valid(a.result);

INSERT INTO call_search (call_id)
SELECT c.call_id FROM calls c
WHERE c.ended_at IS NOT NULL AND c.report IS NOT NULL AND json_valid(c.report)
  AND json_type(c.report, '$.transcript') = 'array' AND json_array_length(c.report, '$.transcript') > 0;

INSERT INTO call_text (rowid, body)
SELECT s.id, group_concat(json_extract(j.value, '$.text'), char(10))
FROM call_search s JOIN calls c ON c.call_id = s.call_id, json_each(c.report, '$.transcript') j
GROUP BY s.id;
