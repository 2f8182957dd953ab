SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- phase0_cleanup: remove whatever an earlier (possibly half-finished or hand-made) attempt left,
-- so the later phases start from the base schema. Safe on a fresh database: every statement is
-- IF EXISTS. Never touches the app tables of base_schema.sql or their rows (only opskit's
-- triggers on them).

-- Every app table, parents before children (the one order of every opskit LOCK). First SHARE
-- ROW EXCLUSIVE: it stops new writes and waits only for those in flight, while their foreign-key
-- checks (ROW SHARE on the parents) still pass; then ACCESS EXCLUSIVE, the strongest mode any
-- statement below needs (DROP TRIGGER, DROP INDEX), so no statement upgrades a lock later. The
-- runner bounds this locked section by lock_timeout (docs/migrations.md).
LOCK TABLE users, chains, chain_members, projects, votes, comments, follows, chain_posts,
    chain_post_replies, messages, intro_requests, investor_profiles
    IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE users, chains, chain_members, projects, votes, comments, follows, chain_posts,
    chain_post_replies, messages, intro_requests, investor_profiles
    IN ACCESS EXCLUSIVE MODE;

-- ------------------------------------------------------------------ phase4 (critical indexes)
-- Newest phase first. Plain DROP INDEX: this file runs in one transaction (on a fresh database
-- these find nothing and lock nothing).
DROP INDEX IF EXISTS projects_owner_live_idx;
DROP INDEX IF EXISTS projects_live_newest_idx;
DROP INDEX IF EXISTS projects_chain_live_idx;
DROP INDEX IF EXISTS votes_project_type_idx;
DROP INDEX IF EXISTS votes_user_up_idx;
DROP INDEX IF EXISTS comments_project_newest_idx;
DROP INDEX IF EXISTS follows_followee_follower_idx;
DROP INDEX IF EXISTS messages_recipient_unread_idx;
DROP INDEX IF EXISTS messages_sender_partner_newest_idx;
DROP INDEX IF EXISTS messages_recipient_partner_newest_idx;
DROP INDEX IF EXISTS intro_requests_target_status_idx;
DROP INDEX IF EXISTS intro_requests_requester_status_idx;
DROP INDEX IF EXISTS users_investors_idx;
DROP INDEX IF EXISTS chain_posts_chain_newest_idx;
DROP INDEX IF EXISTS chain_post_replies_post_newest_idx;
DROP INDEX IF EXISTS projects_title_trgm_idx;
DROP INDEX IF EXISTS projects_tagline_trgm_idx;
DROP INDEX IF EXISTS projects_tags_gin_idx;
DROP INDEX IF EXISTS users_username_trgm_idx;
DROP INDEX IF EXISTS users_display_name_trgm_idx;
DROP INDEX IF EXISTS chains_name_trgm_idx;
DROP INDEX IF EXISTS mv_search_index_popularity_idx;
DROP INDEX IF EXISTS message_conversations_denorm_user_recent_idx;

-- ------------------------------------------------------------------ phases 3 and 2 (views, queue)
-- Triggers first so no write can reach a dropped queue; CASCADE on the function also removes
-- enqueue triggers of older names. pg_trgm is kept on purpose: other objects may use it.
DROP TRIGGER IF EXISTS trg_opskit_mvq_projects ON projects;
DROP TRIGGER IF EXISTS trg_opskit_mvq_projects_truncate ON projects;
DROP TRIGGER IF EXISTS trg_opskit_mvq_users ON users;
DROP TRIGGER IF EXISTS trg_opskit_mvq_users_truncate ON users;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chains ON chains;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chains_truncate ON chains;
DROP TRIGGER IF EXISTS trg_opskit_mvq_votes ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvq_votes_truncate ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvq_comments ON comments;
DROP TRIGGER IF EXISTS trg_opskit_mvq_comments_truncate ON comments;
DROP TRIGGER IF EXISTS trg_opskit_mvq_follows ON follows;
DROP TRIGGER IF EXISTS trg_opskit_mvq_follows_truncate ON follows;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_members ON chain_members;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_members_truncate ON chain_members;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_posts ON chain_posts;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_posts_truncate ON chain_posts;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_post_replies ON chain_post_replies;
DROP TRIGGER IF EXISTS trg_opskit_mvq_chain_post_replies_truncate ON chain_post_replies;
DROP TRIGGER IF EXISTS trg_opskit_mvq_intro_requests ON intro_requests;
DROP TRIGGER IF EXISTS trg_opskit_mvq_investor_profiles ON investor_profiles;
DROP FUNCTION IF EXISTS opskit_mv_enqueue_refresh() CASCADE;

DROP MATERIALIZED VIEW IF EXISTS mv_investors_directory;
DROP MATERIALIZED VIEW IF EXISTS mv_chain_posts;
DROP MATERIALIZED VIEW IF EXISTS mv_search_index;
DROP MATERIALIZED VIEW IF EXISTS mv_project_details;
DROP MATERIALIZED VIEW IF EXISTS mv_chains_discovery;
DROP MATERIALIZED VIEW IF EXISTS mv_leaderboard_builders;
DROP MATERIALIZED VIEW IF EXISTS mv_leaderboard_projects;
DROP MATERIALIZED VIEW IF EXISTS mv_feed_projects;

DROP TABLE IF EXISTS mv_dependencies;
DROP TABLE IF EXISTS mv_refresh_log;
DROP TABLE IF EXISTS mv_refresh_queue;

-- ------------------------------------------------------------------ phase1 (denormalized tables)
-- Same objects as phase1_denormalized_tables.down.sql + phase1_backfill_data.down.sql, plus the
-- projects triggers of the first phase1 design (per-owner deltas), which later ones dropped.

DROP TRIGGER IF EXISTS trg_opskit_users_del ON users;
DROP TRIGGER IF EXISTS trg_opskit_users_upd ON users;
DROP TRIGGER IF EXISTS trg_opskit_projects_ins ON projects;
DROP TRIGGER IF EXISTS trg_opskit_projects_upd ON projects;
DROP TRIGGER IF EXISTS trg_opskit_projects_before_del ON projects;
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
DROP FUNCTION IF EXISTS opskit_trg_projects_before_delete();
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


-- The relations readers query (and project_stats) may have been tables or views in an earlier
-- attempt: drop whatever kind each name has.
DO $cleanup$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.relname, c.relkind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema()
          AND c.relname IN ('user_dashboard_stats', 'intro_request_stats',
                            'message_conversations_denorm', 'project_stats')
        ORDER BY c.relname = 'project_stats'  -- user_dashboard_stats reads it: drop it last
    LOOP
        EXECUTE format(
            CASE r.relkind
                WHEN 'v' THEN 'DROP VIEW IF EXISTS %I'
                WHEN 'm' THEN 'DROP MATERIALIZED VIEW IF EXISTS %I'
                ELSE 'DROP TABLE IF EXISTS %I'
            END,
            r.relname);
    END LOOP;
END
$cleanup$;
DROP TABLE IF EXISTS user_dashboard_stats_delta;
DROP TABLE IF EXISTS user_dashboard_stats_base;
DROP TABLE IF EXISTS project_stats_delta;
DROP TABLE IF EXISTS project_stats_base;
DROP TABLE IF EXISTS intro_request_stats_delta;
DROP TABLE IF EXISTS intro_request_stats_base;
DROP TABLE IF EXISTS opskit_reconcile_keys;
