SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase2_materialized_views: its triggers first (so no write logs into a dropped table),
-- then the functions, the relations, the change log and the refresh bookkeeping. App tables and
-- their rows are not touched. DROP FUNCTION opskit_mv_log_truncate() has no CASCADE on purpose:
-- while phase3's triggers still use it, this script fails (and changes nothing) instead of
-- leaving triggers that would break every write.

-- The tables whose triggers go, locked together, parents before children (the one order of
-- every opskit LOCK). First SHARE ROW EXCLUSIVE: it stops new writes and waits only for those
-- in flight, while their foreign-key checks (ROW SHARE on the parents) still pass; then ACCESS
-- EXCLUSIVE, which DROP TRIGGER needs, now waiting only for statements that are finishing. The
-- runner bounds this locked section by lock_timeout (docs/migrations.md).
LOCK TABLE users, chains, chain_members, projects, votes, comments, follows, chain_posts,
    chain_post_replies
    IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE users, chains, chain_members, projects, votes, comments, follows, chain_posts,
    chain_post_replies
    IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER IF EXISTS trg_opskit_mvlog_votes_ins ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_votes_upd ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_votes_moved ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_votes_del ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_votes_truncate ON votes;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_projects ON projects;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_projects_truncate ON projects;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_users ON users;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_users_truncate ON users;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chains ON chains;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chains_truncate ON chains;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_comments ON comments;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_comments_truncate ON comments;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_follows ON follows;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_follows_truncate ON follows;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_members ON chain_members;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_members_truncate ON chain_members;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_posts ON chain_posts;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_posts_truncate ON chain_posts;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_post_replies ON chain_post_replies;
DROP TRIGGER IF EXISTS trg_opskit_mvlog_chain_post_replies_truncate ON chain_post_replies;

DROP FUNCTION IF EXISTS opskit_mv_log_truncate();
DROP FUNCTION IF EXISTS opskit_mv_log_vote_new();
DROP FUNCTION IF EXISTS opskit_mv_log_vote_old();
DROP FUNCTION IF EXISTS opskit_mv_log_projects();
DROP FUNCTION IF EXISTS opskit_mv_log_users();
DROP FUNCTION IF EXISTS opskit_mv_log_chains();
DROP FUNCTION IF EXISTS opskit_mv_log_comments();
DROP FUNCTION IF EXISTS opskit_mv_log_follows();
DROP FUNCTION IF EXISTS opskit_mv_log_chain_members();
DROP FUNCTION IF EXISTS opskit_mv_log_chain_posts();
DROP FUNCTION IF EXISTS opskit_mv_log_chain_post_replies();

DROP FUNCTION IF EXISTS mv_project_details_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_project_details_def(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_chains_discovery_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_chains_discovery_def(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_leaderboard_builders_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_leaderboard_builders_def(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_leaderboard_projects_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_leaderboard_projects_def(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_feed_projects_keys(text[], bigint[]);
DROP FUNCTION IF EXISTS mv_feed_projects_def(text[], bigint[]);
DROP FUNCTION IF EXISTS opskit_trending_score(bigint, timestamptz, timestamptz);

DROP TABLE IF EXISTS mv_project_details;
DROP TABLE IF EXISTS mv_chains_discovery;
DROP TABLE IF EXISTS mv_leaderboard_builders;
DROP TABLE IF EXISTS mv_leaderboard_projects;
DROP TABLE IF EXISTS mv_feed_projects;
DROP TABLE IF EXISTS mv_feed_scoring;

DROP VIEW IF EXISTS mv_refresh_queue;
DROP TABLE IF EXISTS mv_refresh_log;
DROP TABLE IF EXISTS mv_applied_keys;
DROP TABLE IF EXISTS mv_pending_changes;
DROP TABLE IF EXISTS mv_change_routes;
DROP TABLE IF EXISTS mv_change_log;
