SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase3_search_and_forums: its triggers, its routes and pending changes, its relations
-- and their functions. phase2's change log, functions and relations stay. pg_trgm stays: other
-- objects may use it. App tables and their rows are not touched.

-- The tables whose triggers go, locked together, parents before children (the one order of
-- every opskit LOCK). First SHARE ROW EXCLUSIVE: it stops new writes and waits only for those
-- in flight, while their foreign-key checks (ROW SHARE on the parents) still pass; then ACCESS
-- EXCLUSIVE, which DROP TRIGGER needs, now waiting only for statements that are finishing. The
-- runner bounds this locked section by lock_timeout (docs/migrations.md).
LOCK TABLE intro_requests, investor_profiles IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE intro_requests, investor_profiles IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS trg_opskit_mvlog_intro_requests ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_intro_requests_truncate ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_investor_profiles ON investor_profiles;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_investor_profiles_truncate ON investor_profiles;
DROP FUNCTION IF EXISTS opskit_mv_log_intro_requests();
DROP FUNCTION IF EXISTS opskit_mv_log_investor_profiles();

DELETE FROM mv_change_routes
WHERE view_name IN ('mv_search_index', 'mv_chain_posts', 'mv_investors_directory');
DELETE FROM mv_pending_changes
WHERE view_name IN ('mv_search_index', 'mv_chain_posts', 'mv_investors_directory');

DROP FUNCTION IF EXISTS mv_investors_directory_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_investors_directory_def(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_chain_posts_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_chain_posts_def(text[], bigint[]);
DROP FUNCTION IF EXISTS opskit_search_words_sync(text[], bigint[]);
DROP TABLE IF EXISTS search_synced;
DROP TABLE IF EXISTS search_postings;
DROP TABLE IF EXISTS search_words;
DROP FUNCTION IF EXISTS mv_search_index_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_search_index_def(text[], bigint[]);
DROP TABLE IF EXISTS mv_investors_directory;
DROP TABLE IF EXISTS mv_chain_posts;
DROP TABLE IF EXISTS mv_search_index;
