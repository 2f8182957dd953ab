-- The maintenance side of the views (`opskit refresh`, the daemon). Blocks are loaded by
-- opskit.sql.queries(); blocks with {placeholders} are composed with psycopg.sql from the
-- relations of opskit.refresh.MAINTAINED. The writer side is the change-log triggers of
-- phase2_materialized_views and phase3_search_and_forums.

-- name: known_views --
SELECT DISTINCT view_name FROM mv_change_routes;

-- name: route_changes --
-- Every change the log holds, committed, moves to the pending changes of each relation its
-- entity feeds ('*': every relation), one row per relation, entity and id. DELETE ... RETURNING
-- sees committed rows only; a change committed meanwhile is moved by the next call.
-- The record_touched slot is empty, or (phase 1 applied) the record_touched_users CTE below.
WITH moved AS (
    DELETE FROM mv_change_log RETURNING changed_at, entity, entity_id
), routed AS (
    INSERT INTO mv_pending_changes (view_name, entity, entity_id, changed_at)
    SELECT r.view_name, m.entity, m.entity_id, min(m.changed_at)
    FROM moved m
    JOIN (SELECT entity, view_name FROM mv_change_routes
          UNION ALL
          SELECT DISTINCT '*', view_name FROM mv_change_routes) r ON r.entity = m.entity
    GROUP BY r.view_name, m.entity, m.entity_id
)
{record_touched}
SELECT count(*) FROM moved;

-- name: record_touched_users --
-- Part of route_changes: the users whose dashboard row a routed change may move without any
-- delta - a project's old and new owner, a user written - recorded for `opskit reconcile
-- --changed` (opskit_reconcile_keys, in its key order).
, touched AS (
    INSERT INTO opskit_reconcile_keys AS k (entity, entity_id)
    SELECT DISTINCT 'user', m.entity_id
    FROM moved m
    WHERE m.entity IN ('owner', 'user')
    ORDER BY 2
    ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false
    WHERE k.claimed
)

-- name: record_view_keys --
-- The keys a batch applied, for `opskit reconcile --changed` (insert-only: see mv_applied_keys).
INSERT INTO mv_applied_keys (view_name, kind, key)
SELECT DISTINCT %(view)s::text, k.kind, k.key
FROM unnest(%(kinds)s::text[], %(keys)s::bigint[]) AS k (kind, key);

-- name: collect_applied_keys --
-- The view keys that batches applied join the touched keys of `opskit reconcile --changed` (in
-- their order): after each routing and before each check, in READ COMMITTED, where the upsert
-- cannot fail a batch; so mv_applied_keys stays small and repeated keys collapse.
WITH applied AS (
    DELETE FROM mv_applied_keys RETURNING view_name, kind, key
)
INSERT INTO opskit_reconcile_keys AS r (entity, kind, entity_id)
SELECT DISTINCT view_name, kind, key FROM applied
ORDER BY 1, 2, 3
ON CONFLICT (entity, kind, entity_id, other_id) DO UPDATE SET claimed = false
WHERE r.claimed;

-- name: due_views --
-- Relations with pending changes, the longest waiting first, unless backing off: after n failed batches in a row (since
-- its last completed one, within a day) a relation waits backoff_base * 2^(n-1) seconds, at
-- most backoff_max, after the last failure. The backoff lives in mv_refresh_log, so every
-- daemon (and a restarted one) honours it.
SELECT p.view_name
FROM (SELECT view_name, min(changed_at) AS oldest FROM mv_pending_changes GROUP BY view_name) p
CROSS JOIN LATERAL (
    SELECT count(*) AS failures, max(f.refresh_finished_at) AS last_failed_at
    FROM mv_refresh_log f
    WHERE f.view_name = p.view_name AND f.status = 'failed'
      AND f.refresh_started_at > now() - interval '1 day'
      AND f.refresh_started_at > coalesce(
          (SELECT max(c.refresh_started_at) FROM mv_refresh_log c
           WHERE c.view_name = p.view_name AND c.status = 'completed'), '-infinity')
) f
WHERE f.failures = 0
   OR f.last_failed_at < now() - make_interval(secs => least(
          %(backoff_base_s)s * 2 ^ (f.failures - 1), %(backoff_max_s)s))
ORDER BY p.oldest;

-- name: trending_is_old --
-- Whether the feed's stored trending scores are older than the max age, or are being moved to
-- a new instant.
SELECT coalesce((SELECT scored_at < now() - make_interval(secs => %(max_age_s)s)
                        OR rescoring_to IS NOT NULL
                 FROM mv_feed_scoring), false);

-- name: claim_pending --
-- The batch: up to `limit` of the relation's pending changes, oldest first, deleted in the
-- batch's transaction (a failed or killed batch leaves them pending).
WITH claimed AS (
    DELETE FROM mv_pending_changes
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM mv_pending_changes
        WHERE view_name = %(view)s
        ORDER BY changed_at
        LIMIT %(limit)s))
    RETURNING entity, entity_id, changed_at
)
SELECT clock_timestamp(), array_agg(entity), array_agg(entity_id), min(changed_at), count(*)
FROM claimed;

-- name: claim_all_pending --
-- A full build covers every change its snapshot holds.
WITH claimed AS (
    DELETE FROM mv_pending_changes WHERE view_name = %(view)s RETURNING changed_at
)
SELECT clock_timestamp(), min(changed_at), count(*) FROM claimed;

-- name: touched_keys --
SELECT coalesce(array_agg(kind), ARRAY[]::text[]), coalesce(array_agg(key), ARRAY[]::bigint[])
FROM {keys_function}(%(entities)s::text[], %(ids)s::bigint[]);

-- name: delete_keys --
DELETE FROM {view} WHERE {match};

-- name: insert_keys --
INSERT INTO {view} SELECT * FROM {definition}(%(kinds)s::text[], %(keys)s::bigint[]);

-- name: delete_all --
DELETE FROM {view};

-- name: insert_all --
INSERT INTO {view} SELECT * FROM {definition}(NULL, NULL);

-- name: log_owners_changed --
-- Owners whose phase-1 counts a repair or backfill rewrote (all owners with user_ids NULL), and
-- their projects, whose project_stats rows the same repair rewrote: mv_leaderboard_builders
-- reads the owners' counts and the project views the projects' counts, so their rows are
-- recomputed by the next batch, like any other change.
INSERT INTO mv_change_log (changed_at, entity, entity_id)
SELECT clock_timestamp(), 'owner', o.id
FROM (SELECT unnest(%(user_ids)s::bigint[]) AS id
      WHERE %(user_ids)s::bigint[] IS NOT NULL
      UNION
      SELECT DISTINCT owner_id FROM projects WHERE %(user_ids)s::bigint[] IS NULL) o
UNION ALL
SELECT clock_timestamp(), 'project_votes', p.id
FROM projects p
WHERE %(user_ids)s::bigint[] IS NULL OR p.owner_id = ANY (%(user_ids)s::bigint[]);

-- name: log_projects_changed --
-- Projects whose project_stats rows a repair rewrote: the project views read those counts.
INSERT INTO mv_change_log (changed_at, entity, entity_id)
SELECT clock_timestamp(), 'project_votes', unnest(%(project_ids)s::bigint[]);

-- name: log_batch --
-- One row per applied batch or full build: its oldest change, and the relation's changes
-- still pending (progress while catching up). Returns that and the batch's staleness.
INSERT INTO mv_refresh_log
    (view_name, kind, refresh_started_at, refresh_finished_at, duration_ms, status, worker_id,
     oldest_change_at, changes_applied, keys_applied, pending_after)
SELECT %(view)s, %(kind)s, %(started_at)s, clock_timestamp(),
       round(extract(epoch FROM clock_timestamp() - %(started_at)s::timestamptz) * 1000),
       'completed', %(worker)s, %(oldest)s, %(changes)s, %(keys)s,
       (SELECT count(*) FROM mv_pending_changes WHERE view_name = %(view)s)
RETURNING pending_after,
          extract(epoch FROM refresh_finished_at - oldest_change_at)::float8;

-- name: notify_changed --
-- Tells the API workers' answer caches that the relation's rows changed: delivered when (and
-- only if) the transaction that changed them commits (docs/interface.md §7).
SELECT pg_notify('opskit_views', %(view)s);

-- name: log_failure --
INSERT INTO mv_refresh_log
    (view_name, kind, refresh_started_at, refresh_finished_at, duration_ms, status, error,
     worker_id)
VALUES (%(view)s, %(kind)s, clock_timestamp(), clock_timestamp(), 0, 'failed', %(error)s,
        %(worker)s);

-- name: forget_old_log --
-- The log keeps a day and an hour: the write-up's monitoring query reads the last 24 hours.
DELETE FROM mv_refresh_log WHERE refresh_started_at < now() - interval '25 hours';

-- name: move_trending_instant --
-- A full build scores every row for now(): any re-scoring under way is over.
UPDATE mv_feed_scoring SET scored_at = now(), rescoring_to = NULL, rescored_through = NULL;

-- name: start_trending_rescore --
-- Old scores get a new instant to move to; no row moves yet (rescore_trending_chunk does).
UPDATE mv_feed_scoring SET rescoring_to = now()
WHERE rescoring_to IS NULL AND scored_at < now() - make_interval(secs => %(max_age_s)s)
RETURNING rescoring_to;

-- name: rescore_trending_chunk --
-- The next `chunk` rows by project_id, scored for the new instant with the counts they hold;
-- the number moved. Fewer than `chunk`: every row has moved, and scored_at takes the new
-- instant. Run under the feed's lock, so no batch adds a row behind the pointer meanwhile.
WITH s AS (
    SELECT rescoring_to, rescored_through FROM mv_feed_scoring WHERE rescoring_to IS NOT NULL
), chunk AS (
    SELECT f.project_id
    FROM mv_feed_projects f, s
    WHERE s.rescored_through IS NULL OR f.project_id > s.rescored_through
    ORDER BY f.project_id
    LIMIT %(chunk)s
), moved AS (
    UPDATE mv_feed_projects f
    SET scored_at = s.rescoring_to,
        trending_score = opskit_trending_score(f.score, f.created_at, s.rescoring_to)
    FROM s, chunk c
    WHERE f.project_id = c.project_id
    RETURNING f.project_id
), counted AS (
    SELECT count(*) AS rows, max(project_id) AS through FROM moved
)
UPDATE mv_feed_scoring g
SET scored_at = CASE WHEN c.rows < %(chunk)s THEN g.rescoring_to ELSE g.scored_at END,
    rescoring_to = CASE WHEN c.rows < %(chunk)s THEN NULL ELSE g.rescoring_to END,
    rescored_through = CASE WHEN c.rows < %(chunk)s THEN NULL ELSE c.through END
FROM counted c
WHERE g.rescoring_to IS NOT NULL
RETURNING c.rows;

-- name: try_lock --
SELECT pg_try_advisory_lock(%(space)s, %(key)s);

-- name: unlock --
SELECT pg_advisory_unlock(%(space)s, %(key)s);

-- name: columns --
-- The relation's columns in order.
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass(%(view)s) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum;

-- name: definition_diff --
-- The keys whose rows differ between the relation and its definition over the base tables
-- (a row in one and not in the other), and the number of rows compared.
WITH relation AS (SELECT {columns} FROM {view}),
     definition AS (SELECT {columns} FROM {definition}(NULL, NULL)),
     differing AS (
         (SELECT * FROM relation EXCEPT ALL SELECT * FROM definition)
         UNION ALL
         (SELECT * FROM definition EXCEPT ALL SELECT * FROM relation)
     )
SELECT (SELECT count(*) FROM relation),
       ARRAY(SELECT DISTINCT concat_ws(':', {key}) FROM differing ORDER BY 1);

-- name: unapplied_changes --
-- The relation's changes not applied yet, routed or still in the log.
SELECT coalesce(array_agg(entity), ARRAY[]::text[]), coalesce(array_agg(entity_id), ARRAY[]::bigint[])
FROM (
    SELECT entity, entity_id FROM mv_pending_changes WHERE view_name = %(view)s
    UNION
    SELECT l.entity, l.entity_id
    FROM mv_change_log l
    WHERE l.entity = '*'
       OR l.entity IN (SELECT entity FROM mv_change_routes WHERE view_name = %(view)s)
) changed;

-- name: keys_as_text --
-- The relation's keys those changes touch, as definition_diff names them.
SELECT ARRAY(
    SELECT DISTINCT {key_text}
    FROM {keys_function}(%(entities)s::text[], %(ids)s::bigint[]) AS touched (kind, key));

-- name: sync_search_words --
-- Search's word index follows mv_search_index for the same keys (NULL: every document); see
-- phase3_search_and_forums.sql.
SELECT opskit_search_words_sync(%(kinds)s::text[], %(keys)s::bigint[]);
