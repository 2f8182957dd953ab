-- The refresh queue's worker side (`opskit refresh`, the daemon). Blocks are loaded by
-- opskit.sql.queries(). The writer side is the enqueue trigger of phase2_materialized_views.

-- name: known_views --
SELECT DISTINCT view_name FROM mv_dependencies ORDER BY view_name;

-- name: relation_readable --
-- Whether a relation exists and can be read: a materialized view left unpopulated (WITH NO DATA)
-- fails any query that names it.
SELECT to_regclass(%(name)s) IS NOT NULL
       AND coalesce((SELECT ispopulated FROM pg_matviews
                     WHERE schemaname = current_schema() AND matviewname = %(name)s), true);

-- name: request_trending_rescore --
-- mv_feed_projects scores trending for the instant of its last refresh (scored_at), and scores
-- decay with time: once they are older than the max age, ask for a refresh as a write would,
-- unless one is pending already. Two daemons may both ask; one refresh serves both requests.
INSERT INTO mv_refresh_queue (view_name, source_table)
SELECT 'mv_feed_projects', 'trending max age'
WHERE (SELECT scored_at FROM mv_feed_projects LIMIT 1)
          < now() - make_interval(secs => %(trending_max_age_s)s)
  AND NOT EXISTS (SELECT FROM mv_refresh_queue
                  WHERE view_name = 'mv_feed_projects' AND status = 'pending');

-- name: due_views --
-- A view is due when no request came for the debounce window, or its oldest pending request is
-- older than the max wait (so a constant stream of writes cannot keep it stale forever), and it
-- is not backing off: after n failed runs in a row (since its last completed run, within a
-- day) it waits backoff_base * 2^(n-1) seconds, at most backoff_max, after the last failure.
-- The backoff lives in mv_refresh_log, so every daemon (and a restarted one) honours it.
WITH pending AS (
    SELECT view_name,
           min(refresh_requested_at) AS oldest,
           max(refresh_requested_at) AS newest
    FROM mv_refresh_queue
    WHERE status = 'pending'
    GROUP BY view_name
), failing AS (
    SELECT f.view_name, count(*) AS failures, max(f.refresh_finished_at) AS last_failed_at
    FROM mv_refresh_log f
    WHERE f.status = 'failed'
      AND f.refresh_started_at > now() - interval '1 day'
      AND f.refresh_started_at > coalesce(
          (SELECT max(c.refresh_started_at) FROM mv_refresh_log c
           WHERE c.view_name = f.view_name AND c.status = 'completed'), '-infinity')
    GROUP BY f.view_name
)
SELECT p.view_name
FROM pending p
LEFT JOIN failing f USING (view_name)
WHERE (p.newest < now() - make_interval(secs => %(debounce_s)s)
       OR p.oldest < now() - make_interval(secs => %(max_wait_s)s))
  AND (f.failures IS NULL
       OR f.last_failed_at < now() - make_interval(secs => least(
              %(backoff_base_s)s * 2 ^ (f.failures - 1), %(backoff_max_s)s)))
ORDER BY p.oldest;

-- name: views_with_expired_claims --
-- Claims older than the lease: either a long refresh, or a worker that died holding them.
SELECT DISTINCT view_name
FROM mv_refresh_queue
WHERE status = 'claimed' AND claimed_at < now() - make_interval(secs => %(lease_s)s);

-- name: release_expired_claims --
-- Run while holding the view's lock: no live worker is refreshing it, so its claims are orphans.
UPDATE mv_refresh_queue SET status = 'pending', claimed_at = NULL, claimed_by = NULL
WHERE view_name = %(view)s AND status = 'claimed'
  AND claimed_at < now() - make_interval(secs => %(lease_s)s);

-- name: claim --
UPDATE mv_refresh_queue
SET status = 'claimed', claimed_at = clock_timestamp(), claimed_by = %(worker)s
WHERE id IN (
    SELECT id FROM mv_refresh_queue
    WHERE view_name = %(view)s AND status = 'pending'
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: advance_generation --
-- After a claim has committed and before the wait, and at each poll: writers that skip the queue
-- while the generation stands look again (phase2_materialized_views.sql).
SELECT nextval('mv_refresh_generation');

-- name: running_transactions --
-- The transactions of this database that hold an xid right after the claim was announced (a writer
-- that skipped enqueueing because it saw a request we claimed is one of them). Other databases
-- of the cluster are left out: their transactions cannot have written to this queue, and a long
-- one elsewhere must not stall our refreshes. backend_xid is shown for every role's sessions.
SELECT coalesce(array_agg(backend_xid::text), '{}')
FROM pg_stat_activity
WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid();

-- name: transactions_still_running --
SELECT EXISTS (
    SELECT FROM pg_stat_activity
    WHERE datname = current_database() AND backend_xid::text = ANY (%(xids)s)
);

-- name: sync_search_words --
-- Search's word index follows mv_search_index (phase3_search_and_forums.sql).
SELECT opskit_search_words_sync();

-- name: log_start --
INSERT INTO mv_refresh_log (view_name, refresh_started_at, status, worker_id)
VALUES (%(view)s, clock_timestamp(), 'running', %(worker)s)
RETURNING id;

-- name: log_finish --
UPDATE mv_refresh_log
SET refresh_finished_at = clock_timestamp(),
    duration_ms = round(extract(epoch FROM clock_timestamp() - refresh_started_at) * 1000),
    status = %(status)s, error = %(error)s, requests_done = %(requests)s
WHERE id = %(log_id)s
RETURNING duration_ms;

-- name: mark_done --
-- now(): every request of one run gets the same finished_at (the start of the transaction that
-- publishes the refresh), which is how staleness groups them into runs.
UPDATE mv_refresh_queue
SET status = 'done', finished_at = now(), last_refresh_duration_ms = %(duration_ms)s
WHERE id = ANY (%(ids)s);

-- name: release_claims --
UPDATE mv_refresh_queue SET status = 'pending', claimed_at = NULL, claimed_by = NULL
WHERE id = ANY (%(ids)s);

-- name: forget_old_done --
-- Done requests are kept an hour for the monitoring queries, then dropped: the queue stays small.
DELETE FROM mv_refresh_queue WHERE status = 'done' AND finished_at < now() - interval '1 hour';

-- name: fail_orphaned_runs --
-- Run while holding the view's lock: a run still 'running' belongs to a worker that died.
UPDATE mv_refresh_log
SET status = 'failed', error = 'the worker died during the refresh',
    refresh_finished_at = clock_timestamp()
WHERE view_name = %(view)s AND status = 'running';

-- name: try_lock --
SELECT pg_try_advisory_lock(%(space)s, %(key)s);

-- name: unlock --
SELECT pg_advisory_unlock(%(space)s, %(key)s);
