SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase3_search_and_forums: its triggers, its rows of the dependency list and the queue,
-- its views and the search word index. phase2's queue, function and views stay. pg_trgm stays: other objects may use
-- it. App tables and their rows are not touched.

-- The tables whose triggers go, locked together, parents before children (the one order of
-- every opskit LOCK). First SHARE ROW EXCLUSIVE: it stops new writes and waits only for those
-- in flight, while their foreign-key checks (ROW SHARE on the parents) still pass; then ACCESS
-- EXCLUSIVE, which DROP TRIGGER needs, now waiting only for statements that are finishing. The
-- runner bounds this locked section by lock_timeout (docs/migrations.md).
LOCK TABLE intro_requests, investor_profiles IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE intro_requests, investor_profiles IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS trg_opskit_mvq_intro_requests ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_mvq_investor_profiles ON investor_profiles;

DELETE FROM mv_dependencies
WHERE view_name IN ('mv_search_index', 'mv_chain_posts', 'mv_investors_directory');
DELETE FROM mv_refresh_queue
WHERE view_name IN ('mv_search_index', 'mv_chain_posts', 'mv_investors_directory')
  AND status <> 'done';

DROP MATERIALIZED VIEW IF EXISTS mv_investors_directory;
DROP MATERIALIZED VIEW IF EXISTS mv_chain_posts;
DROP FUNCTION IF EXISTS opskit_search_words_sync();
DROP TABLE IF EXISTS search_synced;
DROP TABLE IF EXISTS search_postings;
DROP TABLE IF EXISTS search_words;
DROP MATERIALIZED VIEW IF EXISTS mv_search_index;
