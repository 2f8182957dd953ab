-- opskit: no-transaction
-- Phase 4: the indexes the API's read paths need, built CONCURRENTLY so writes go on.
--
-- Each index names the query it serves. The app already has its keys and one index per foreign
-- key (base schema); these are the composite, partial, covering and trigram indexes on top.
-- Materialized views carry their own indexes (phases 2 and 3). Built one at a time: the runner
-- records each finished statement and resumes after a crash, dropping an INVALID leftover first.
SET lock_timeout = '5s';
SET statement_timeout = '2h';

-- users/stats (before): projects_count and votes/comments received, owner's live projects
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_owner_live_idx
    ON projects (owner_id, id) WHERE deleted_at IS NULL;
-- feed sort=newest (before): live projects newest first, keyset-friendly
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_live_newest_idx
    ON projects (created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- chains discovery (before, and the daemon's batches of mv_chains_discovery): live projects
-- per chain and the newest, index-only (without created_at, 14.5k heap pages for 80 chains)
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_chain_live_idx
    ON projects (chain_id, created_at) WHERE deleted_at IS NULL;
-- No index here names votes.vote_type: a flip could not be a HOT update and every vote insert
-- would pay one more entry, for before-mode counts only (docs/measurements.md, "Write cost").
-- project page (before): newest comments of a project
CREATE INDEX CONCURRENTLY IF NOT EXISTS comments_project_newest_idx
    ON comments (project_id, created_at DESC, id DESC);
-- users/stats followers_count and builders leaderboard (before): followers per user, index-only
CREATE INDEX CONCURRENTLY IF NOT EXISTS follows_followee_follower_idx
    ON follows (followee_id, follower_id);
-- users/stats unread_messages (before): unread messages of a recipient
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_recipient_unread_idx
    ON messages (recipient_id, sender_id) WHERE read_at IS NULL;
-- messages/conversations (before): a user's sent messages by partner, newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_sender_partner_newest_idx
    ON messages (sender_id, recipient_id, created_at DESC, id DESC);
-- messages/conversations (before): a user's received messages by partner, newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_recipient_partner_newest_idx
    ON messages (recipient_id, sender_id, created_at DESC, id DESC);
-- users/stats pending_intros_received and intros/stats (before): intros to a user by status
CREATE INDEX CONCURRENTLY IF NOT EXISTS intro_requests_target_status_idx
    ON intro_requests (target_id, status);
-- intros/stats (before): intros sent by a user by status
CREATE INDEX CONCURRENTLY IF NOT EXISTS intro_requests_requester_status_idx
    ON intro_requests (requester_id, status);
-- investors directory (before): the investors among users
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_investors_idx
    ON users (id) WHERE role = 'investor';
-- chains/{slug}/posts (before): a chain's posts newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS chain_posts_chain_newest_idx
    ON chain_posts (chain_id, created_at DESC, id DESC);
-- chains/{slug}/posts (before): replies per post and the latest reply
CREATE INDEX CONCURRENTLY IF NOT EXISTS chain_post_replies_post_newest_idx
    ON chain_post_replies (post_id, created_at DESC);
-- The trigram operator classes below (phase 3 creates the extension too; this keeps phase 4 whole).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
-- search (before): fuzzy match on project titles
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_title_trgm_idx
    ON projects USING gin (lower(title) gin_trgm_ops);
-- search (before): fuzzy match on project taglines
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_tagline_trgm_idx
    ON projects USING gin (lower(tagline) gin_trgm_ops);
-- search (before): projects by tag
CREATE INDEX CONCURRENTLY IF NOT EXISTS projects_tags_gin_idx
    ON projects USING gin (tags);
-- search (before): fuzzy match on usernames
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_username_trgm_idx
    ON users USING gin (lower(username) gin_trgm_ops);
-- search (before): fuzzy match on display names
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_display_name_trgm_idx
    ON users USING gin (lower(display_name) gin_trgm_ops);
-- search (before): fuzzy match on chain names
CREATE INDEX CONCURRENTLY IF NOT EXISTS chains_name_trgm_idx
    ON chains USING gin (lower(name) gin_trgm_ops);
-- search (after, whole-word shortcut): the most popular search documents first
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_search_index_popularity_idx
    ON mv_search_index (popularity DESC, kind, entity_id);
-- conversations (after): a user's newest conversations first, a top-N scan even for the
-- busiest users (thousands of conversations) instead of a sort per request
CREATE INDEX CONCURRENTLY IF NOT EXISTS message_conversations_denorm_user_recent_idx
    ON message_conversations_denorm (user_id, last_message_at DESC, last_message_id DESC);
-- feed sort=trending (after): the newest projects' scores, index-only (feed_trending_after)
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_feed_projects_newest_score_idx
    ON mv_feed_projects (created_at DESC, project_id DESC) INCLUDE (score);
-- feed sort=trending (after): high-score candidates with their age, index-only
CREATE INDEX CONCURRENTLY IF NOT EXISTS mv_feed_projects_top_created_idx
    ON mv_feed_projects (score DESC, project_id DESC) INCLUDE (created_at);
