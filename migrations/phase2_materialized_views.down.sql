SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '15min';

-- Undo phase2_materialized_views: its triggers first (so no write enqueues into a dropped table),
-- then the function, the views, and the queue tables. App tables and their rows are not touched.
-- DROP FUNCTION has no CASCADE on purpose: while phase3's triggers still use it, this script
-- fails (and changes nothing) instead of leaving triggers that would break every write.

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

DROP FUNCTION IF EXISTS opskit_mv_enqueue_refresh();

DROP MATERIALIZED VIEW IF EXISTS mv_project_details;
DROP MATERIALIZED VIEW IF EXISTS mv_chains_discovery;
DROP MATERIALIZED VIEW IF EXISTS mv_leaderboard_builders;
DROP MATERIALIZED VIEW IF EXISTS mv_leaderboard_projects;
DROP MATERIALIZED VIEW IF EXISTS mv_feed_projects;

DROP TABLE IF EXISTS mv_dependencies;
DROP TABLE IF EXISTS mv_refresh_log;
DROP TABLE IF EXISTS mv_refresh_queue;
