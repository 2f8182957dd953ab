SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase1_denormalized_tables (and phase1_backfill_data, should its own down script not
-- have run): the triggers first, so no write calls a dropped function, then the functions, the
-- views and the tables. App tables and their rows are not touched. Idempotent (IF EXISTS).
-- phase0_cleanup holds the same statements.

-- The tables whose triggers go, locked together, parents before children (the one order of
-- every opskit LOCK). First SHARE ROW EXCLUSIVE: it stops new writes and waits only for those
-- in flight, while their foreign-key checks (ROW SHARE on the parents) still pass; then ACCESS
-- EXCLUSIVE, which DROP TRIGGER needs, now waiting only for statements that are finishing. The
-- runner bounds this locked section by lock_timeout (docs/migrations.md).
LOCK TABLE users, projects, votes, comments, follows, messages, intro_requests
    IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE users, projects, votes, comments, follows, messages, intro_requests
    IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS trg_opskit_users_del ON users;
DROP TRIGGER IF EXISTS trg_opskit_users_upd ON users;
DROP TRIGGER IF EXISTS trg_opskit_projects_ins ON projects;
DROP TRIGGER IF EXISTS trg_opskit_projects_upd ON projects;
DROP TRIGGER IF EXISTS trg_opskit_projects_del ON projects;
DROP TRIGGER IF EXISTS trg_opskit_votes_ins ON votes;
DROP TRIGGER IF EXISTS trg_opskit_votes_upd ON votes;
DROP TRIGGER IF EXISTS trg_opskit_votes_del ON votes;
DROP TRIGGER IF EXISTS trg_opskit_comments_ins ON comments;
DROP TRIGGER IF EXISTS trg_opskit_comments_upd ON comments;
DROP TRIGGER IF EXISTS trg_opskit_comments_del ON comments;
DROP TRIGGER IF EXISTS trg_opskit_follows_ins ON follows;
DROP TRIGGER IF EXISTS trg_opskit_follows_upd ON follows;
DROP TRIGGER IF EXISTS trg_opskit_follows_del ON follows;
DROP TRIGGER IF EXISTS trg_opskit_messages_ins ON messages;
DROP TRIGGER IF EXISTS trg_opskit_messages_upd ON messages;
DROP TRIGGER IF EXISTS trg_opskit_messages_del ON messages;
DROP TRIGGER IF EXISTS trg_opskit_intro_requests_ins ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_intro_requests_upd ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_intro_requests_del ON intro_requests;

DROP FUNCTION IF EXISTS opskit_trg_users_gone();
DROP FUNCTION IF EXISTS opskit_trg_projects();
DROP FUNCTION IF EXISTS opskit_trg_votes_insert();
DROP FUNCTION IF EXISTS opskit_trg_votes_update();
DROP FUNCTION IF EXISTS opskit_trg_votes_delete();
DROP FUNCTION IF EXISTS opskit_trg_votes();  -- the one function of the earlier files
DROP FUNCTION IF EXISTS opskit_trg_comments();
DROP FUNCTION IF EXISTS opskit_trg_follows();
DROP FUNCTION IF EXISTS opskit_trg_messages();
DROP FUNCTION IF EXISTS opskit_conversation_apply(bigint, bigint, messages, messages);
DROP FUNCTION IF EXISTS opskit_trg_intro_requests();
DROP FUNCTION IF EXISTS opskit_fold_user_dashboard_deltas(integer);
DROP FUNCTION IF EXISTS opskit_fold_intro_request_deltas(integer);
-- phase1_backfill_data's functions and batch table
DROP PROCEDURE IF EXISTS opskit_backfill_queued(text[]);
DROP FUNCTION IF EXISTS opskit_backfill_plan(bigint, bigint);
DROP TABLE IF EXISTS opskit_backfill_batches;
DROP PROCEDURE IF EXISTS opskit_backfill_in_batches(bigint);  -- of older files
DROP FUNCTION IF EXISTS opskit_backfill_all_denormalized(bigint);  -- of older files
DROP FUNCTION IF EXISTS opskit_backfill_project_stats(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_backfill_owner_totals(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_backfill_user_columns(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_backfill_user_dashboard_stats(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_backfill_projects(bigint[]);
DROP FUNCTION IF EXISTS opskit_backfill_intro_request_stats(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_backfill_message_conversations(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_truth_user_dashboard_stats(bigint, bigint);
DROP FUNCTION IF EXISTS opskit_truth_intro_request_stats(bigint, bigint);

DROP VIEW IF EXISTS user_dashboard_stats;
DROP VIEW IF EXISTS project_stats;
DROP VIEW IF EXISTS intro_request_stats;
DROP TABLE IF EXISTS message_conversations_denorm;
DROP TABLE IF EXISTS user_dashboard_stats_delta;
DROP TABLE IF EXISTS user_dashboard_stats_base;
DROP TABLE IF EXISTS project_stats_delta;
DROP TABLE IF EXISTS project_stats_base;
DROP TABLE IF EXISTS intro_request_stats_delta;
DROP TABLE IF EXISTS intro_request_stats_base;
DROP TABLE IF EXISTS opskit_reconcile_keys;
