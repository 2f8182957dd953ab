SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase1_backfill_data: drop its functions. The base rows it wrote stay: the triggers of
-- phase1_denormalized_tables keep them exact, and undoing that phase drops them. App tables and
-- their rows are not touched.

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
